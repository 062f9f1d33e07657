"""Ship a measured recipe run's weights with the package (for maintainers):

    python -m pyro_vae reproduce vae-static-mnist --out runs/reproduce
    python scripts/ship_weights.py runs/reproduce/vae-static-mnist

The run must be the recipe's (every setting that decides what it computes equal to the recipe's) and scored
with the recipe's protocol (``eval.json`` holds K importance samples on the whole test split at the recipe's
checkpoint). The checkpoint's model weights, float32 and nothing else, go to ``pyro_vae/pretrained/<name>.pt``
with their SHA-256 and the figure in ``pyro_vae/pretrained/index.json``. Bad input is one line and exit 2."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# a model larger than this is not shipped in the package
MAX_BYTES = 10 * 2**20


def main(argv: list[str] | None = None) -> int:
    from pyro_vae.errors import ConfigError, OneLineParser, run_script

    p = OneLineParser(prog="ship_weights.py", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a recipe's run folder, scored with the recipe's protocol")
    p.add_argument("--name", default=None, help="the recipe (default: the run folder's name, as reproduce gives it)")
    p.add_argument("--hardware", default=None, help="where it was measured, for the record (default: this CPU)")
    args = p.parse_args(argv)

    def go() -> None:
        import platform

        from pyro_vae.pretrained import write_pretrained
        from pyro_vae.recipes import differences, get_recipe
        from pyro_vae.runs import load_run, read_run_json
        from pyro_vae.runs.results import read_results

        saved = read_run_json(args.run_dir)
        name = args.name or Path(args.run_dir).name  # reproduce names the folder after the recipe
        recipe = get_recipe(name)
        checkpoint = Path(args.run_dir) / "checkpoints" / f"{recipe.checkpoint}.pt"
        vae, config, state = load_run(args.run_dir, checkpoint=checkpoint)
        changed = differences(config, recipe)
        if changed:
            raise ConfigError(f"{args.run_dir} is not the {name} recipe's run: {', '.join(changed)} differ")
        size = sum(t.numel() * 4 for t in vae.state_dict().values())
        if size > MAX_BYTES:
            raise ConfigError(f"the model takes {size / 2**20:.1f} MiB; only models under 10 MiB are shipped")
        k = str(recipe.k)
        rows = [
            r
            for r in read_results(Path(args.run_dir) / "eval.json")
            if r.get("split") == recipe.split and r.get("limit") is None and r.get("epoch") == state["epoch"]
            and k in r.get("nll", {}) and Path(r.get("checkpoint", "")).name == checkpoint.name
        ]  # fmt: skip
        if not rows:
            raise ConfigError(
                f"{args.run_dir}/eval.json has no K={k} score of {checkpoint.name} on the whole {recipe.split} split; "
                f"run: python -m pyro_vae evaluate {args.run_dir} --checkpoint {checkpoint} --k {k}"
            )
        row = rows[-1]
        nll = {"k": int(k), "mean": row["nll"][k]["mean"], "se": row["nll"][k]["se"], "num_points": row["num_points"]}
        hardware = args.hardware or platform.processor() or platform.machine()
        threads = saved.get("threads")
        measured = (
            f"{date.today():%Y-%m-%d}, {hardware}, torch {saved['versions']['torch']}; trained with "
            f"`python -m pyro_vae reproduce {name}`{f' ({threads} thread(s))' if threads else ''}, scored with "
            f"`python -m pyro_vae evaluate RUN --checkpoint RUN/checkpoints/{checkpoint.name} --k {k}`"
        )
        entry = write_pretrained(name, vae, epoch=state["epoch"], nll=nll, measured=measured)
        print(f"shipped {entry.path} ({entry.path.stat().st_size / 2**20:.2f} MiB, sha256 {entry.sha256[:16]}…): "
              f"epoch {entry.epoch}, -log p(x) {nll['mean']:.2f} ± {nll['se']:.2f} at K={k}")  # fmt: skip

    return run_script(go)


if __name__ == "__main__":
    sys.exit(main())
