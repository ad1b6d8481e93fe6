"""Render docs/synthetic_samples.png: 8 synthetic images per class, as in the README.

    python docs/make_synthetic_grid.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from leukoml.data import SYNTHETIC_CLASSES, render_cell  # noqa: E402

PER_CLASS = 8


def main() -> None:
    fig, axes = plt.subplots(len(SYNTHETIC_CLASSES), PER_CLASS, figsize=(PER_CLASS * 1.1, 6.2))
    for row, kind in enumerate(SYNTHETIC_CLASSES):
        for col in range(PER_CLASS):
            ax = axes[row, col]
            ax.imshow(render_cell(kind, 96, seed=(0, row, col)))
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(kind, fontsize=10)
    fig.suptitle("data=synthetic: 96 px renders, one row per class", fontsize=11)
    fig.tight_layout()
    out = Path(__file__).with_name("synthetic_samples.png")
    fig.savefig(out, dpi=80)
    print(out)


if __name__ == "__main__":
    main()
