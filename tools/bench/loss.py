"""Time one loss-and-bank-update step of CMCObjective against plain references of the same arithmetic.

One step = forward over the view graph, backward to the embeddings, momentum update of every bank.
The references write each direction (anchor a against view b's bank) with a single matrix product:

    bmm:  logits = torch.bmm(bank_b[cat(index, neg)], z_a.unsqueeze(2)).squeeze(2) / tau   # as the original CMC
    gemm: logits = (z_a @ bank_b.T).gather(1, cat(index, neg)) / tau                        # whole bank, then pick
    loss = cross_entropy(logits, 0)          # (B, K+1), positive in column 0

(gemm: one backward of the summed loss, as a trainer does; bmm: backward after each direction, so
that its (B, K+1, D) gathers need not all be held at once), then
`bank[index] = normalize(m * bank[index] + (1 - m) * z)` per view. All three sample the
same negatives from identically seeded generators, so their losses must agree; the script checks it.

"ours" is CMCObjective with positives="bank" (column 0 scores bank_b[index]); "fresh" is the same
objective with positives="fresh" (column 0 is z_a[i] . z_b[i] / tau from this step, via
`fresh_positive`; the negatives stay the bank's), timed on the same views, graph, B, K and bank rows.
Both update their banks with the same embeddings, so their banks stay identical. Once per config,
untimed, the gemm reference with column 0 replaced by z_a[i] . z_b[i] / tau checks fresh's first
step: fresh and bank then differ only through column 0.
Steps are interleaved (ours, fresh, gemm, bmm, ours, ...) and reported as medians of --repeats steps;
the slow bmm form sits out the later rounds once it has used --budget seconds (its count is column n).

    python tools/bench/loss.py            # 2-4 views, core and full, K 4096/16384, B 64/128 (~3 min)
    python tools/bench/loss.py --quick    # K 4096, B 64 only (~30 s)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mvcoding.objectives import CMCObjective

VIEWS = ["rgb", "flow", "depth", "audio"]
GRAPHS = [(2, "full"), (3, "core"), (3, "full"), (4, "core"), (4, "full")]
FORMS = ("gemm", "bmm")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_step(form, banks, pairs, z_leaf, index, gen, n_data, K, tau, momentum, positives="bank") -> float:
    """The same step written plainly: one matrix product per direction, then the bank update.

    form "bmm": against the gathered rows (B, K+1, D), as the original CMC; "gemm": z @ bank.T, then
    pick the sampled columns. positives "fresh": column 0 becomes z_a[i] . z_b[i] / tau instead.
    """
    z = {v: F.normalize(p, dim=1) for v, p in z_leaf.items()}
    neg = torch.randint(0, n_data - 1, (index.shape[0], K), generator=gen, device=gen.device).to(index.device)
    neg += (neg >= index[:, None]).long()
    idx = torch.cat([index[:, None], neg], dim=1)  # (B, K+1)
    target = torch.zeros(index.shape[0], dtype=torch.long, device=index.device)
    losses = []
    for a, b in pairs:
        for anchor, other in ((a, b), (b, a)):
            if form == "bmm":
                logits = torch.bmm(banks[other][idx], z[anchor].unsqueeze(2)).squeeze(2) / tau  # (B, K+1)
            else:
                logits = (z[anchor] @ banks[other].T).gather(1, idx) / tau  # (B, N) -> (B, K+1)
            if positives == "fresh":  # only column 0 changes: this step's other view, not its bank row
                positive = (z[anchor] * z[other]).sum(1, keepdim=True) / tau  # (B, 1)
                logits = torch.cat([positive, logits[:, 1:]], dim=1)  # (B, K+1)
            loss = F.cross_entropy(logits, target)
            if form == "bmm":  # free this direction's (B, K+1, D) gather now: 12 of them need ~13 GB
                loss.backward(retain_graph=True)  # (retain the shared normalize; the gather goes with `loss`)
                loss = loss.detach()
            losses.append(loss)
    if form == "gemm":
        sum(losses).backward()
    total = sum(loss.item() for loss in losses)
    with torch.no_grad():
        for v, bank in banks.items():
            bank[index] = F.normalize(momentum * bank[index] + (1 - momentum) * z[v].detach(), dim=1)
    return total


def our_step(obj, z_leaf, index, gen) -> float:
    z = {v: F.normalize(p, dim=1) for v, p in z_leaf.items()}
    loss, _ = obj(z, index, gen)
    loss.backward()
    obj.update(z, index)
    return loss.item()


def bench(n_views, graph, B, K, args, device) -> tuple[dict[str, float], int, float, float]:
    """Median seconds per step for ours, fresh and each reference, the number of bmm steps timed, the
    largest relative loss difference seen (ours vs the references), and that of fresh's first step
    vs the gemm reference with a fresh column 0.

    Every round times ours, fresh, gemm, then bmm; bmm (far slower) sits out the later rounds once it
    has used `args.budget` seconds in this config, so its n can be smaller than --repeats.
    """
    views = VIEWS[:n_views]
    objs = {
        positives: CMCObjective(
            views=views,
            graph=graph,
            anchor=views[0],
            n_data=args.n_data,
            dim=args.dim,
            K=K,
            tau=0.07,
            momentum=0.5,
            positives=positives,
        ).to(device)
        for positives in ("bank", "fresh")
    }
    obj = objs["bank"]
    init = torch.Generator().manual_seed(1)
    z_leaf = {v: torch.randn(B, args.dim, generator=init).to(device).requires_grad_() for v in views}
    index = torch.randperm(args.n_data, generator=init)[:B].to(device)
    banks = {form: {v: obj.banks.get_buffer(v).clone() for v in views} for form in FORMS}
    # untimed: the first step with a fresh column 0, on copies of the starting banks
    fresh_ref = reference_step(
        "gemm",
        {v: obj.banks.get_buffer(v).clone() for v in views},
        obj.pairs,
        z_leaf,
        index,
        torch.Generator(device=device).manual_seed(0),
        args.n_data,
        K,
        0.07,
        0.5,
        positives="fresh",
    )
    gens = {name: torch.Generator(device=device).manual_seed(0) for name in ("ours", "fresh", *FORMS)}
    times = {name: [] for name in gens}
    diff, fresh_diff = 0.0, None
    for _ in range(args.repeats):
        losses = {}
        for name in times:  # interleaved: ours, fresh, gemm, bmm, ours, ...
            if name == "bmm" and sum(times["bmm"]) > args.budget:
                continue
            sync(device)
            t0 = time.perf_counter()
            if name == "ours":
                losses[name] = our_step(obj, z_leaf, index, gens[name])
            elif name == "fresh":
                losses[name] = our_step(objs["fresh"], z_leaf, index, gens[name])
            else:
                losses[name] = reference_step(
                    name, banks[name], obj.pairs, z_leaf, index, gens[name], args.n_data, K, 0.07, 0.5
                )
            sync(device)
            times[name].append(time.perf_counter() - t0)
        if fresh_diff is None:  # fresh's first step against the gemm reference with a fresh column 0
            fresh_diff = abs(losses["fresh"] - fresh_ref) / abs(fresh_ref)
        fresh = losses.pop("fresh")
        if abs(fresh - losses["ours"]) < 1e-6 * abs(losses["ours"]):
            raise SystemExit("fresh and bank positives gave the same loss: column 0 did not change")
        # bmm only skips the last rounds, so every reference that ran did the same step as ours
        diff = max(diff, *(abs(losses["ours"] - loss) / abs(loss) for loss in losses.values()))
    return {name: statistics.median(t) for name, t in times.items()}, len(times["bmm"]), diff, fresh_diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K=4096 and B=64 only")
    parser.add_argument("--n-data", type=int, default=10000, help="bank rows (dataset size)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per config (median)")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of bmm steps per config, then it sits out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    Ks, Bs = ([4096], [64]) if args.quick else ([4096, 16384], [64, 128])

    print(
        f"# torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
        f"n_data={args.n_data}, D={args.dim}, medians of {args.repeats} interleaved steps (bmm: n)"
    )
    print(
        f"{'views':>5} {'graph':>5} {'pairs':>5} {'B':>4} {'K':>6} {'n':>2} {'ours ms':>8} "
        f"{'bmm ms':>8} {'ours/bmm':>8} {'gemm ms':>8} {'ours/gemm':>9} {'fresh ms':>8} {'fresh/ours':>10}"
    )
    warm_obj = CMCObjective(views=VIEWS[:2], graph="full", n_data=args.n_data, K=64).to(device)
    warm = {v: torch.randn(8, 128, device=device, requires_grad=True) for v in VIEWS[:2]}
    our_step(warm_obj, warm, torch.arange(8, device=device), None)  # one-off start-up costs
    warm_obj.positives = "fresh"
    our_step(warm_obj, warm, torch.arange(8, device=device), None)
    worst = fresh_worst = 0.0
    for K in Ks:
        for B in Bs:
            for n_views, graph in GRAPHS:
                t, n, diff, fresh_diff = bench(n_views, graph, B, K, args, device)
                worst, fresh_worst = max(worst, diff), max(fresh_worst, fresh_diff)
                pairs = n_views * (n_views - 1) // 2 if graph == "full" else n_views - 1
                print(
                    f"{n_views:>5} {graph:>5} {pairs:>5} {B:>4} {K:>6} {n:>2} {t['ours'] * 1e3:>8.1f} "
                    f"{t['bmm'] * 1e3:>8.1f} {t['ours'] / t['bmm']:>8.3f} "
                    f"{t['gemm'] * 1e3:>8.1f} {t['ours'] / t['gemm']:>9.3f} "
                    f"{t['fresh'] * 1e3:>8.1f} {t['fresh'] / t['ours']:>10.3f}",
                    flush=True,
                )
    print(f"# largest relative loss difference ours vs references: {worst:.1e}")
    print(f"# largest relative loss difference fresh vs gemm reference with a fresh column 0: {fresh_worst:.1e}")
    if worst > 1e-4:
        raise SystemExit("ours and a reference disagree: the benchmark compares different arithmetic")
    if fresh_worst > 1e-4:
        raise SystemExit("fresh and bank positives differ in more than column 0")


if __name__ == "__main__":
    main()
