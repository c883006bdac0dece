"""Acceptance: PROMPTPEEK-style prompt recovery against a prefix-cache server and a θ-memory server.

Starts each server in its own process on 127.0.0.1 (mode "shared": KV-cache model, shared prefix cache,
longest-prefix-first scheduler; mode "isolated": θ-memory model, per-user fixed-size state, no sharing).
For each of --victims victims a random template and secret are drawn; the victim sends
``template + secret + suffix``; the attacker, knowing the template and a candidate list per secret
position (the true token among --candidates), recovers the secret token by token. Reports accuracy
(response order and TTFT guesses) with 95% Wilson intervals, chance, requests per token, fully
recovered secrets, the capacity (bits per request) of the latency channel and of the answer-order
channel (candidate correct -> its place among the round's answers), and the fraction of rounds
whose blocker was answered before all candidates were sent (such rounds can fail on a loaded machine:
raise --blocker-new-tokens and --settle-s). Saves
runs/theta/promptpeek_attack.png/.json.

    PYTHONPATH=src python experiments/theta/promptpeek_attack.py [--kv-model PRESET --theta-model PRESET]
"""

import json
import random
from dataclasses import asdict

import matplotlib.pyplot as plt
import numpy as np
from _common import parser, setup, table

from ttmem.security.attack import promptpeek, summarize_attacks
from ttmem.security.client import SubprocessServer, post_json


def attack_server(name: str, mode: str, args) -> tuple:
    rng = random.Random(args.seed)
    results = []
    cap = max(256, args.blocker_new_tokens, args.candidate_new_tokens)
    with SubprocessServer(name, mode=mode, max_new_tokens=cap, lifetime_s=1800) as srv:
        for victim in range(args.victims):
            template = [rng.randrange(args.vocab) for _ in range(args.template_len)]
            secret = [rng.randrange(args.vocab) for _ in range(args.secret_len)]
            candidates = []
            for s in secret:
                c = rng.sample([t for t in range(args.vocab) if t != s], args.candidates - 1) + [s]
                rng.shuffle(c)
                candidates.append(c)
            suffix = [rng.randrange(args.vocab) for _ in range(4)]
            status = post_json(
                srv.host, srv.port, "/generate", {"user": f"victim{victim}", "prompt": template + secret + suffix}
            )[0]
            if status != 200:
                raise RuntimeError(f"victim request failed with {status}")
            results.append(
                promptpeek(
                    srv.host,
                    srv.port,
                    template,
                    candidates,
                    secret,
                    args.vocab,
                    blocker_new_tokens=args.blocker_new_tokens,
                    candidate_new_tokens=args.candidate_new_tokens,
                    settle_s=args.settle_s,
                    seed=args.seed + victim,
                )
            )
    return summarize_attacks(results, args.candidates), results


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--kv-model", default=None, help="preset for the prefix-cache server (default tiny attention)")
    p.add_argument("--theta-model", default=None, help="preset for the θ-memory server (default tiny θ)")
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--victims", type=int, default=20)
    p.add_argument("--template-len", type=int, default=24)
    p.add_argument("--secret-len", type=int, default=8)
    p.add_argument("--candidates", type=int, default=8)
    # a blocker of 128 tokens and a 0.02 s settle lost whole secrets in some runs on a shared 2-core machine
    p.add_argument("--blocker-new-tokens", type=int, default=512)
    p.add_argument("--candidate-new-tokens", type=int, default=16)
    p.add_argument("--settle-s", type=float, default=0.1, help="pause between the blocker and the candidates")
    p.add_argument("--modes", nargs="+", choices=["shared", "isolated"], default=["shared", "isolated"])
    args = p.parse_args()
    out = setup(args)
    servers = {
        "prefix cache (shared, LPM)": (args.kv_model or f"tiny-attention:{args.vocab}", "shared"),
        "θ-memory (isolated)": (args.theta_model or f"tiny-theta:{args.vocab}", "isolated"),
    }
    servers = {label: v for label, v in servers.items() if v[1] in args.modes}
    rows, dump, lat = [], {}, {}
    for label, (name, mode) in servers.items():
        summary, results = attack_server(name, mode, args)
        s = summary
        rows.append(
            [
                label,
                name,
                s.tokens,
                f"{s.accuracy_order:.3f} [{s.ci_order[0]:.3f}, {s.ci_order[1]:.3f}]",
                f"{s.accuracy_ttft:.3f} [{s.ci_ttft[0]:.3f}, {s.ci_ttft[1]:.3f}]",
                f"{s.chance:.3f}",
                s.requests_per_token,
                s.secrets_fully_recovered,
                f"{s.capacity_bits_per_request:.3f} (null {s.capacity_null_bits:.3f})",
                f"{s.order_capacity_bits_per_request:.3f} (null {s.order_capacity_null_bits:.3f})",
                f"{s.blocker_early_fraction:.3f}",
            ]
        )
        dump[label] = {
            "server": name,
            "mode": mode,
            **asdict(summary),
            # per victim: where the first wrong guess happened (errors propagate to later positions)
            "first_error_position": [
                next((i for i, (g, t) in enumerate(zip(r.guesses_order, r.truth, strict=True)) if g != t), None)
                for r in results
            ],
        }
        lat[label] = results
    print(
        f"{args.victims} victims x {args.secret_len} secret tokens, {args.candidates} candidates per position, "
        f"vocab {args.vocab}, template {args.template_len} tokens"
    )
    print(
        table(
            [
                "server",
                "model",
                "tokens",
                "accuracy by order [95% CI]",
                "accuracy by TTFT [95% CI]",
                "chance",
                "requests/token",
                "secrets fully recovered",
                "latency channel bits/request",
                "answer-order channel bits/request",
                "rounds with blocker done early",
            ],
            rows,
        )
    )
    fig, axes = plt.subplots(1, len(lat), figsize=(5 * len(lat), 4), squeeze=False)
    for ax, (label, results) in zip(axes[0], lat.items(), strict=True):
        ok = np.array([t for r in results for t, c in r.latencies_ns if c]) / 1e6
        bad = np.array([t for r in results for t, c in r.latencies_ns if not c]) / 1e6
        bins = np.linspace(0, np.quantile(np.concatenate([ok, bad]), 0.99), 40)
        ax.hist(bad, bins=bins, alpha=0.6, density=True, label="wrong candidate")
        ax.hist(ok, bins=bins, alpha=0.6, density=True, label="correct candidate")
        ax.set(title=label, xlabel="attacker-observed latency (ms)", ylabel="density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "promptpeek_attack.png", dpi=120)
    (out / "promptpeek_attack.json").write_text(json.dumps(dump, indent=1))
    print(f"\nsaved {out / 'promptpeek_attack.png'} and .json")


if __name__ == "__main__":
    main()
