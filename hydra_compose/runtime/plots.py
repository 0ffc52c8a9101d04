"""PNG plots of a power sweep and of a concurrency sweep (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def sweep_plots(rows, out: Path) -> list[Path]:  # noqa: ANN001
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    gpus = sorted({r.gpu for r in rows})
    for name, key, ylabel in (("tokps_vs_power_limit.png", "tg_tokens_per_s", "decode tok/s"),
                              ("tokps_per_watt_vs_power_limit.png", "tokens_per_joule", "tok/s per W")):
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        for gpu in gpus:
            pts = sorted((r.limit_w, getattr(r, key)) for r in rows if r.gpu == gpu and getattr(r, key) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=gpu)
        ax.set_xlabel("power limit (W)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} vs power limit")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        paths.append(out / name)
    return paths


def concurrency_plot(levels: list[dict], out: Path) -> Path:
    """Aggregate tok/s (left axis) and p99 TTFT / inter-token latency (right axis) vs streams."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [lv["concurrency"] for lv in levels]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(x, [lv["aggregate_tokens_per_s"] for lv in levels], marker="o", color="tab:blue", label="aggregate tok/s")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("aggregate decode tok/s")
    ax.grid(True, alpha=0.3)
    right = ax.twinx()
    for key, label, color in (("ttft_p99_ms", "p99 TTFT (ms)", "tab:red"), ("itl_p99_ms", "p99 inter-token (ms)",
                                                                              "tab:orange")):
        right.plot(x, [lv[key] for lv in levels], marker="s", linestyle="--", color=color, label=label)
    right.set_ylabel("p99 latency (ms)")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper left")
    ax.set_title("throughput and tail latency vs concurrency")
    fig.tight_layout()
    path = out / "tokps_and_p99_vs_concurrency.png"
    fig.savefig(path)
    plt.close(fig)
    return path
