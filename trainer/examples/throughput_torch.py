"""The same training job as `cargo run --release -p quiver-trainer --example
throughput`, in PyTorch, for the throughput ratio: MLP 16->64->4, ReLU,
softmax cross-entropy, Adam (lr 1e-2), mini-batches of 256, 100k rows x 5
epochs, float32, on the CPU with all cores (and with one).

    python trainer/examples/throughput_torch.py     # needs torch and numpy
"""

import time

import numpy as np
import torch


def data(rows, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(rows, 16)).astype(np.float32)
    s = x[:, 0] + x[:, 1] - x[:, 2] * x[:, 3]
    y = np.clip(s + 1.5, 0.0, 3.99).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def train(x, y, epochs=5, batch=256):
    torch.manual_seed(1)
    # Standardisation, as the Quiver trainer learns and bakes in.
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return model


def main():
    x, y = data(100_000)
    for threads in [1, torch.get_num_threads()]:
        torch.set_num_threads(threads)
        train(x[:10_000], y[:10_000], epochs=1)  # warm-up
        t = time.perf_counter()
        train(x, y)
        secs = time.perf_counter() - t
        print(f"torch {torch.__version__} mlp 16-64-4, 100k rows x 5 epochs, threads={threads}: "
              f"{secs:.2f} s, {500_000 / secs:,.0f} examples/s")


if __name__ == "__main__":
    main()
