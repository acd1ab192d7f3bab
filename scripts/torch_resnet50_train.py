"""PyTorch CPU peer of the main job's teacher phase: one ResNet50 train step (torchvision's
ResNet50, ImageNet stem, 10 classes) at 32x32, batch 64, cross-entropy, SGD momentum 0.9, in
images/s — what `tinykd bench train-step --model resnet50` measures.
Usage: python torch_resnet50_train.py [threads] [iters]"""
import sys, time, torch, torch.nn as nn, torchvision

def main():
    torch.manual_seed(0)
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
    iters = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    torch.set_num_threads(threads)
    model = torchvision.models.resnet50(num_classes=10).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    x = torch.randn(64, 3, 32, 32); y = torch.randint(0, 10, (64,))
    def step():
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    step(); step()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    dt = (time.perf_counter() - t0) / iters
    print(f"threads={threads} resnet50_train_img_s={64 / dt:.1f}")

if __name__ == "__main__":
    main()
