"""Regenerate the montages of the simulated datasets shown in the data cards.

Usage (from the repository root, needs the ``sim`` extra)::

    python data_cards/make_montages.py            # writes data_cards/sim_model_{i,ii,iii}.png
    python data_cards/make_montages.py --out-dir /tmp/montages --seed 1

Each montage has one row per class (no_sub, cdm, axion). The first four columns are simulated
images exactly as ``deeplense-ssl simulate --model M --seed S`` writes them (native size, with
noise), shown with an asinh stretch and ``origin="lower"`` (x along columns, y along rows). The
last column is the noiseless difference between the first image of the row and the same source
lensed without substructure; CDM subhalos above 1e8 Msun are marked (o) and the vortex line is
drawn, so one can check that the perturbations sit where the stored parameters say.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from deeplense_ssl import simulate as sim  # noqa: E402

N_EXAMPLES = 4


def make_montage(model: str, seed: int, out: Path) -> Path:
    """Draw one model's montage and save it as a PNG at ``out``."""
    renderer = sim.Renderer(model)
    inst = renderer.instrument
    half = renderer.image_size * inst.pixel_scale_arcsec / 2
    extent = (-half, half, -half, half)
    fig, axes = plt.subplots(3, N_EXAMPLES + 1, figsize=(1.55 * (N_EXAMPLES + 1), 1.6 * 3))
    for label, name in enumerate(sim.CLASS_NAMES):
        first = None
        for col in range(N_EXAMPLES):
            index = label + 3 * col  # image index i has label i % 3
            image, _, scene = sim.simulate_one(renderer, index, seed, noise=True)
            first = first or scene
            ax = axes[label, col]
            scale = max(np.percentile(image, 99.5), 1e-12)
            ax.imshow(
                np.arcsinh(image / (0.1 * scale)), origin="lower", cmap="magma", extent=extent
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name)
        no_sub = sim.Scene(
            label=0,
            theta_e_arcsec=first.theta_e_arcsec,
            source_x_arcsec=first.source_x_arcsec,
            source_y_arcsec=first.source_y_arcsec,
        )
        diff = renderer.noiseless(first) - renderer.noiseless(no_sub)
        lim = max(np.abs(diff).max(), 1e-12)
        ax = axes[label, N_EXAMPLES]
        ax.imshow(diff, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim, extent=extent)
        if label == 1:
            big = first.subhalo_mass_msun > 1e8
            ax.scatter(
                first.subhalo_x_arcsec[big],
                first.subhalo_y_arcsec[big],
                s=14,
                facecolors="none",
                edgecolors="k",
                linewidths=0.6,
            )
        if label == 2:
            length = first.vortex_half_length_arcsec
            dx = length * np.cos(first.vortex_angle_rad)
            dy = length * np.sin(first.vortex_angle_rad)
            ax.plot([-dx, dx], [-dy, dy], "k-", lw=0.8)
        ax.set_xlim(-half, half)
        ax.set_ylim(-half, half)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, N_EXAMPLES].set_title("minus no_sub", fontsize=8)
    fig.suptitle(
        f'{model}: {renderer.image_size} px x {inst.pixel_scale_arcsec}"/px, '
        f'PSF {inst.psf_fwhm_arcsec}", seed {seed}',
        fontsize=8,
    )
    fig.tight_layout(pad=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=72)
    plt.close(fig)
    # a 256-colour palette keeps the committed PNG small (noise compresses badly)
    Image.open(buffer).convert("RGB").quantize(colors=256).save(out, optimize=True)
    return out


def main() -> None:
    """Write ``sim_<model>.png`` for every model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for model in sim.MODELS:
        print(make_montage(model, args.seed, args.out_dir / f"sim_{model}.png"))


if __name__ == "__main__":
    main()
