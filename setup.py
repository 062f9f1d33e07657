import re
from pathlib import Path

from setuptools import find_packages, setup

# one version, in pyro_vae/__init__.py
VERSION = re.search(r'__version__ = "([^"]+)"', Path("pyro_vae/__init__.py").read_text()).group(1)

setup(
    name="pyro_vae",
    version=VERSION,
    description="Variational autoencoders as Pyro models and guides, trained with SVI",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["pyro_vae", "pyro_vae.*"]),
    # the recipes and the reproduced models' weights ship with the package
    package_data={"pyro_vae.recipes": ["*.json"], "pyro_vae.pretrained": ["*.pt", "index.json"]},
    license="Apache-2.0",
    python_requires=">=3.10",
    install_requires=[
        "pyro-ppl>=1.9",
        "torch>=2.2",
        "torchvision>=0.17",
        "numpy",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist", "ruff", "nbclient", "nbformat", "ipykernel", "scikit-image", "scipy"],
        # the documentation site: Sphinx with MyST pages, the notebooks rendered (not run), the furo theme
        "docs": ["sphinx>=8", "myst-nb>=1.1", "myst-parser>=4", "furo"],
        # JupyterLab for working in the notebooks; the tests run them headless with nbclient
        "notebooks": ["jupyterlab", "ipykernel"],
    },
    entry_points={
        "console_scripts": [
            "pyro-vae-train=pyro_vae.cli:train_main",
            "pyro-vae-evaluate=pyro_vae.cli:evaluate_main",
            "pyro-vae-pictures=pyro_vae.cli:pictures_main",
            "pyro-vae-benchmark=pyro_vae.cli:benchmark_main",
            "pyro-vae-reproduce=pyro_vae.cli:reproduce_main",
        ],
    },
)
