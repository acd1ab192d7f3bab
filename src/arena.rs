//! Disjoint views of a planned f32 arena: the one place that turns a step's buffer ranges into
//! simultaneously borrowable slices (used by the inference engine and the fine-tuner).

use core::ops::Range;

/// Disjoint mutable views of the `N` ranges of `arena` (an empty range gives an empty slice);
/// `None` if two non-empty ranges overlap or one runs past the end.
pub(crate) fn split<const N: usize>(arena: &mut [f32], want: [Range<usize>; N]) -> Option<[&mut [f32]; N]> {
    let mut order: [usize; N] = core::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| (want[i].start, want[i].end));
    let mut out: [&mut [f32]; N] = core::array::from_fn(|_| Default::default());
    let mut rest = arena;
    let mut pos = 0;
    for i in order {
        let r = want[i].clone();
        if r.is_empty() {
            continue;
        }
        if r.start < pos || r.end - pos > rest.len() {
            return None;
        }
        let (_, tail) = core::mem::take(&mut rest).split_at_mut(r.start - pos);
        let (mine, tail) = tail.split_at_mut(r.end - r.start);
        out[i] = mine;
        rest = tail;
        pos = r.end;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn disjoint_ranges_in_any_order() {
        let mut a: [f32; 10] = core::array::from_fn(|i| i as f32);
        let [x, y, z] = split(&mut a, [6..8, 0..2, 3..3]).unwrap();
        assert_eq!((x.to_vec(), y.to_vec(), z.len()), (vec![6.0, 7.0], vec![0.0, 1.0], 0));
    }

    #[test]
    // One region on purpose: `[8..11]` is an array of one range, not a range of values.
    #[allow(clippy::single_range_in_vec_init)]
    fn overlap_and_overrun_are_refused() {
        let mut a = [0.0f32; 10];
        assert!(split(&mut a, [0..5, 4..6]).is_none());
        assert!(split(&mut a, [8..11]).is_none());
    }
}
