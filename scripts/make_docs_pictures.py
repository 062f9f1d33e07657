"""Redraw the pictures of the README and the documentation from a trained run, so they stay real:

    python -m pyro_vae train --out runs/quickstart
    python scripts/make_docs_pictures.py runs/quickstart

It draws the run with ``python -m pyro_vae pictures`` and copies the samples, the reconstructions and the
latent plane into ``docs/_static/pictures/`` (or ``--out``). Bad input is one line and exit status 2."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHOWN = ("samples.png", "reconstructions.png", "latent_plane.png")


def main(argv: list[str] | None = None) -> int:
    from pyro_vae.errors import OneLineParser, run_script
    from pyro_vae.files import check_out_folder
    from pyro_vae.pictures import PicturesConfig, draw_pictures

    p = OneLineParser(prog="make_docs_pictures.py", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="the run to draw (the quickstart's: runs/quickstart)")
    p.add_argument("--out", default=str(ROOT / "docs" / "_static" / "pictures"), help="where the pictures go")
    args = p.parse_args(argv)

    def go() -> None:
        out = Path(args.out)
        check_out_folder(out)
        with tempfile.TemporaryDirectory() as tmp:
            draw_pictures(PicturesConfig(run_dir=args.run_dir, out=str(Path(tmp) / "pictures")))
            out.mkdir(parents=True, exist_ok=True)
            for name in SHOWN:
                shutil.copyfile(Path(tmp) / "pictures" / name, out / name)
        print(f"wrote {', '.join(SHOWN)} to {out}")

    return run_script(go)


if __name__ == "__main__":
    raise SystemExit(main())
