from setuptools import find_packages, setup

setup(
    name="pyro_vae",
    version="0.1.0",
    description="Variational autoencoders as Pyro models and guides, trained with SVI",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["pyro_vae", "pyro_vae.*"]),
    package_data={"pyro_vae.recipes": ["*.json"]},  # the recipes ship with the package
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
