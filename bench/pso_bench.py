"""Benchmark the PSO patch evaluator against the two ways the literature evaluates a swarm.

    python bench/pso_bench.py [--fixtures fixtures/out] [--particles 100] [--iterations 10] [--device cpu|cuda] [--repeats 3]

Same model (the fixture PyTorch CNN), same localized weights of its last layer (fc2), same
negatives (digits it gets wrong) and positives, same seed, swarm size and iteration count; three
evaluators behind the same PSO:
  (1) per-particle full forward pass: set the particle's weights in the model, run the whole model
      (how the public NeuRecover / Arachne-v1 re-implementation evaluates);
  (2) per-particle over cached activations: one particle at a time, the patched layer over the
      cache of what enters it (how Arachne's TOSEM code evaluates);
  (3) convrepair's batched swarm: every particle at once, base logits plus the weight deltas.
Prints repair rate (RR) and break rate (BR) on the search half and the held-out half, fitness
evaluations per second, wall time, and the speed-ups 1/3 and 2/3.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def load_model(path: Path):
    import torch

    from convrepair_plugins.torch.safe_load import load_exported_program

    module = load_exported_program(path).module()
    features = torch.fx.Graph()
    env = {}
    for node in module.graph.nodes:  # the same graph, ending at what enters fc2
        env[node] = features.node_copy(node, lambda n: env[n])
        if node.op == "call_function" and "linear" in str(node.target) and "fc2" in str(node.args[1]):
            features.erase_node(env[node])
            features.output(env[node.args[0]])
            break
    return module, torch.fx.GraphModule(module, features)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=Path("fixtures/out"))
    parser.add_argument("--particles", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--weights", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per evaluator; the median wall time counts")
    args = parser.parse_args()

    import torch

    from convrepair.repair.pso import SearchConfig, SwarmEvaluator, pso
    from convrepair.repair.select import RepairData, localize_weights

    device = "cuda" if args.device == "cuda" and torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    data = np.load(args.fixtures / "digits_all_nchw.npz")
    x_all, y_all = torch.from_numpy(data["x"]), data["y"]
    model, features = load_model(args.fixtures / "torch_cnn.pt2")
    model, features = model.to(device), features.to(device)
    params = dict(model.named_parameters())
    weight, bias = params["fc2.weight"], params["fc2.bias"]
    with torch.no_grad():
        cache = features(x_all.to(device)).cpu().numpy()
        logits = model(x_all.to(device)).cpu().numpy()
    order = np.random.default_rng(args.seed).permutation(len(y_all))
    search, held = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
    w0 = weight.detach().cpu().numpy().copy()

    def split(idx):
        wrong = idx[logits[idx].argmax(1) != y_all[idx]]
        right = idx[logits[idx].argmax(1) == y_all[idx]]
        return wrong, right

    neg, pos = split(search)
    print(f"model: fixture CNN, fc2 {w0.shape}; search half {len(search)} ({len(neg)} wrong), held-out {len(held)}; device {device}")
    repair_data = RepairData(cache[search], logits[search], y_all[search], np.searchsorted(search, neg), np.searchsorted(search, pos))
    positions = localize_weights(repair_data, w0, None, top_n=100, limit=args.weights)
    original = np.array([w0[r, c] for r, c in positions], np.float32)
    stats = (float(w0.mean()), float(w0.std()), float(w0.min()), float(w0.max()))
    config = SearchConfig(particles=args.particles, iterations=args.iterations, patience=10**9, budget_seconds=1e9, seed=args.seed)
    rows_t = torch.tensor([r for r, _ in positions], device=device)
    cols_t = torch.tensor([c for _, c in positions], device=device)
    wanted_t = torch.as_tensor(y_all[search], device=device)
    neg_t = torch.as_tensor(np.searchsorted(search, neg), device=device)
    pos_t = torch.as_tensor(np.searchsorted(search, pos), device=device)
    x_search = x_all[search].to(device)
    cache_t = torch.as_tensor(cache[search], device=device)

    def arachne_fitness(z):
        log_p = torch.log_softmax(z, dim=-1)
        correct = z.argmax(-1) == wanted_t
        nll = -log_p.gather(1, wanted_t[:, None]).squeeze(1)
        score = 0.0
        for index in (neg_t, pos_t):
            score += float((correct[index].float().mean() + 1) / (nll[index].mean() + 1))
        return score

    def full_forward(population):  # (1)
        out = []
        with torch.no_grad():
            for values in population:
                patched = torch.as_tensor(w0, device=device).clone()
                patched[rows_t, cols_t] = torch.as_tensor(values, device=device)
                weight.data.copy_(patched)
                out.append(arachne_fitness(model(x_search)))
            weight.data.copy_(torch.as_tensor(w0, device=device))
        return np.array(out, np.float32)

    def cached_per_particle(population):  # (2)
        out = []
        with torch.no_grad():
            for values in population:
                patched = torch.as_tensor(w0, device=device).clone()
                patched[rows_t, cols_t] = torch.as_tensor(values, device=device)
                out.append(arachne_fitness(cache_t @ patched.T + bias))
        return np.array(out, np.float32)

    swarm = SwarmEvaluator(cache[search], logits[search], y_all[search], np.searchsorted(search, neg),
                           np.searchsorted(search, pos), positions, original, device=device)

    def rates(values, idx):
        patched = w0.copy()
        for (r, c), v in zip(positions, values):
            patched[r, c] = v
        labels = (cache[idx] @ patched.T + bias.detach().cpu().numpy()).argmax(1)
        before = logits[idx].argmax(1)
        wrong, right = before != y_all[idx], before == y_all[idx]
        rr = float((labels[wrong] == y_all[idx][wrong]).mean()) if wrong.any() else 0.0
        br = float((labels[right] != y_all[idx][right]).mean()) if right.any() else 0.0
        return rr, br

    results = {}
    for name, evaluate in [("(1) full forward per particle", full_forward),
                           ("(2) cached, per particle", cached_per_particle),
                           ("(3) convrepair batched swarm", swarm.fitness)]:
        evaluate(original[None].repeat(2, 0))  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        walls = []
        for _ in range(args.repeats):  # shared machines are noisy: the median of a few runs
            started = time.perf_counter()
            result = pso(evaluate, original, stats, config)
            if device == "cuda":
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - started)
        wall = float(np.median(walls))
        rr_s, br_s = rates(result.values, search)
        rr_h, br_h = rates(result.values, held)
        results[name] = wall
        print(f"{name:32s} {wall:8.3f} s  {result.evaluations / wall:10.0f} evals/s  "
              f"RR {rr_s:.2f}/{rr_h:.2f}  BR {br_s:.3f}/{br_h:.3f}  (search/held-out)  fitness {result.fitness:.4f}")
    names = list(results)
    print(f"\nspeed-up (1)/(3): {results[names[0]] / results[names[2]]:.1f}x   (target >= 100 on CPU)")
    print(f"speed-up (2)/(3): {results[names[1]] / results[names[2]]:.1f}x   (target >= 3 on CPU, >= 20 on a GPU)")
    print(f"{args.particles} particles x {args.iterations} iterations, {len(positions)} weights, device {device}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
