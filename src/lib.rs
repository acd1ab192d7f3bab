//! tinykd
