"""`plan serve` table output (rich)."""
from __future__ import annotations

from planner.serving.result import ServeFront, ServeResult


def render_serve(result: ServeResult, console) -> None:
    """`plan serve` table output (rich)."""
    from rich.table import Table

    p = result.plan
    m, c, rq = result.model, result.cluster, result.request
    note = f" ({m.note})" if m.note else ""
    console.print(f"[bold]Serving plan[/] for {m.name}{note} on {c.num_gpus} x {c.gpu}: "
                  f"{rq['prompt_tokens']} prompt + {rq['output_tokens']} output tokens per request, "
                  f"objective {rq['objective']}" + (f", {rq['qps']:g} requests/s" if rq["qps"] else ""))
    t = Table(show_edge=False, show_header=False)
    t.add_column("what")
    t.add_column("value")
    if p.prefill is None:
        t.add_row("replica", f"tp={p.tp} x pp={p.pp}" + _moe_text(p)
                  + f"; {p.replicas} replica(s) prefilling and decoding (aggregated), {p.gpus} GPUs used")
    else:
        f = p.prefill
        t.add_row("prefill", f"tp={f['tp']} x pp={f['pp']}; {f['replicas']} replica(s), {f['gpus']} GPUs: "
                             f"{f['prompts_per_pass']} prompt(s) per {f['pass_ms']:,.1f} ms pass, "
                             f"{f['prompts_per_s']:,.2f} prompts/s, {p.requests_per_s / f['prompts_per_s']:.0%} busy: a "
                             f"prompt waits {f.get('queue_ms', 0.0):,.1f} ms for a pass (M/D/1); KV cache to decode in "
                             f"{p.kv_transfer_ms:,.2f} ms")
        t.add_row("decode", f"tp={p.tp} x pp={p.pp}" + _moe_text(p)
                  + f"; {p.replicas} replica(s), {p.gpus - f['gpus']} GPUs (disaggregated: {p.gpus} GPUs used)")
    t.add_row("precision", f"weights {p.weights}, KV cache {p.kv_cache}")
    t.add_row("batch", f"{p.batch} concurrent requests per " + ("replica" if p.prefill is None else "decode replica")
              + f" (memory allows {p.max_batch}), served continuously")
    t.add_row("latency", f"TTFT {p.ttft_s * 1e3:,.1f} ms, TPOT {p.tpot_s * 1e3:,.2f} ms "
                         f"({1 / p.tpot_s:,.1f} tokens/s per user), request {p.e2e_latency_s:,.2f} s")
    t.add_row("throughput", f"{p.tokens_per_s:,.0f} tokens/s ({p.tokens_per_s_per_replica:,.0f} per replica, "
                            f"{p.tokens_per_s_per_gpu:,.0f} per GPU), {p.requests_per_s:,.2f} requests/s")
    t.add_row("cost", f"${p.usd_per_million_tokens:,.3f} per million tokens (${p.usd_per_1k_tokens:.5f} per 1k) at "
                      f"${result.assumptions['price_usd_per_gpu_hour']:.4g}/GPU-hour "
                      f"({result.assumptions.get('price_kind', 'unstated')})")
    t.add_row("KV cache", f"{p.kv_cache_bytes_per_token / 1e6:.4g} MB per token "
                          f"({p.kv_cache_bytes_per_token_per_gpu / 1e6:.4g} MB per GPU)")
    mg = p.memory_gb
    t.add_row("memory / GPU", f"weights {mg['weights']:.1f} GB + KV cache {mg['kv_cache']:.1f} + activations "
                              f"{mg['activations']:.1f} + workspace {mg['workspace']:.1f} + free {mg['free']:.1f} "
                              f"= usable {mg['usable']:.1f} of {mg['capacity']:.0f} GB")
    d = p.decode_ms
    t.add_row("decode step", f"{d['total']:.2f} ms ({p.decode_bound} bound): GEMMs {d['gemm']:.2f}, attention "
                             f"{d['attention']:.2f}, TP all-reduce {d['tp_comm']:.2f}, pipeline {d['pipeline']:.2f}, "
                             f"other {d['elementwise'] + d['overhead'] + d['lm_head']:.2f}"
                             + ("; no prefill shares the decode replicas" if p.prefill is not None else
                                f"; TPOT adds the other requests' prefills, {d['others_prefill']:.2f} ms"))
    console.print(t)
    if result.alternatives:
        alt = Table(show_edge=False, title="runner-ups")
        for col in ("tp x pp", "replicas", "weights/KV", "batch", "TTFT ms", "TPOT ms", "tokens/s/GPU", "$/M tokens"):
            alt.add_column(col, justify="right")
        for a in result.alternatives:
            pre = "" if a.prefill is None else (f"{a.prefill['replicas']}P tp{a.prefill['tp']}"
                                                f"{' pp' + str(a.prefill['pp']) if a.prefill['pp'] > 1 else ''} + D ")
            alt.add_row(pre + f"{a.tp} x {a.pp}" + (f" ep{a.ep}" if a.ep > 1 else "")
                        + (f" adp{a.attn_dp}" if a.attn_dp > 1 else ""), str(a.replicas),
                        f"{a.weights}/{a.kv_cache}", str(a.batch), f"{a.ttft_s * 1e3:,.1f}", f"{a.tpot_s * 1e3:,.2f}",
                        f"{a.tokens_per_s_per_gpu:,.0f}", f"{a.usd_per_million_tokens:,.3f}")
        console.print(alt)


def _config(p) -> str:
    return (f"tp{p.tp} pp{p.pp}" + (f" ep{p.ep}" if p.ep > 1 else "") + (f" adp{p.attn_dp}" if p.attn_dp > 1 else "")
            + f" {p.weights}/{p.kv_cache}")


def _moe_text(p) -> str:
    """Expert parallelism and attention data parallelism of a replica, in words."""
    return ((f", expert parallel over {p.ep}" if p.ep > 1 else "")
            + (f", attention data parallel in {p.attn_dp} groups of {p.tp // p.attn_dp} GPU(s), each its own "
               f"sequences" if p.attn_dp > 1 else ""))


def render_serve_front(front: ServeFront, console, rows: int = 3) -> None:
    """`plan serve --front` table: the front from the fastest per user to the most per GPU, at most
    max(rows, 12) plans spread evenly along it (every plan is in --format json)."""
    from rich.table import Table

    m, c, rq = front.model, front.cluster, front.request
    lim = ", ".join(f"{k.replace('_ms', '').upper()} <= {v:g} ms" for k, v in rq.items()
                    if k in ("ttft_ms", "tpot_ms", "e2e_ms") and v is not None) or "no latency limit"
    console.print(f"[bold]SLA front[/] for {m.name} on {c.num_gpus} x {c.gpu}: {rq['prompt_tokens']} prompt + "
                  f"{rq['output_tokens']} output tokens per request, {lim}; {len(front.plans)} plans no other beats "
                  f"on both tokens/s per GPU and tokens/s per user")
    n = len(front.plans)
    k = max(rows, 12)
    idx = sorted({round(j * (n - 1) / (k - 1)) for j in range(k)}) if n > k else range(n)
    t = Table(show_edge=False)
    for col in ("tokens/s/user", "tokens/s/GPU", "replica", "replicas", "concurrency", "TTFT ms", "TPOT ms",
                "request s", "$/M tokens"):
        t.add_column(col, justify="right")
    for j in idx:
        p = front.plans[j]
        t.add_row(f"{1 / p.tpot_s if p.tpot_s else 0:,.1f}", f"{p.tokens_per_s_per_gpu:,.0f}", _config(p),
                  str(p.replicas), str(p.batch), f"{p.ttft_s * 1e3:,.1f}", f"{p.tpot_s * 1e3:,.2f}",
                  f"{p.e2e_latency_s:,.2f}", f"{p.usd_per_million_tokens:,.3f}")
    console.print(t)
    if n > k:
        console.print(f"{len(idx)} of the {n} plans on the front shown; --format json lists them all")


def plot_serve_front(front: ServeFront, path: str) -> None:
    """PNG of the front: tokens/s per GPU against tokens/s per user, one colour per replica configuration."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    users = [1 / p.tpot_s if p.tpot_s else 0.0 for p in front.plans]
    ax.plot(users, [p.tokens_per_s_per_gpu for p in front.plans], "k-", lw=0.6, zorder=1)
    for cfg in dict.fromkeys(_config(p) for p in front.plans):
        pts = [(u, p.tokens_per_s_per_gpu) for u, p in zip(users, front.plans) if _config(p) == cfg]
        ax.scatter([x for x, _ in pts], [y for _, y in pts], s=10, label=cfg, zorder=2)
    rq = front.request
    ax.set_xlabel("tokens/s per user (1 / TPOT)")
    ax.set_ylabel("tokens/s per GPU")
    ax.set_title(f"{front.model.name} on {front.cluster.num_gpus} x {front.cluster.gpu}, "
                 f"{rq['prompt_tokens']} + {rq['output_tokens']} tokens", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
