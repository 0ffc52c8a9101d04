"""PNG plots of a power sweep (matplotlib, Agg backend: no display needed)."""

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
