"""pyro_vae: variational autoencoders as Pyro models and guides, trained with SVI."""

from pyro_vae.checkpoint import load_run
from pyro_vae.config import TrainConfig
from pyro_vae.data import ImageData, binarize, load_data
from pyro_vae.errors import ConfigError, DataError, PyroVAEError
from pyro_vae.likelihoods import BernoulliLikelihood
from pyro_vae.model import VAE, build_vae
from pyro_vae.nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, build_networks
from pyro_vae.priors import StandardNormalPrior
from pyro_vae.training import TrainResult, heldout_loss, make_elbo, train

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "BernoulliLikelihood",
    "ConfigError",
    "ConvDecoder",
    "ConvEncoder",
    "DataError",
    "ImageData",
    "MLPDecoder",
    "MLPEncoder",
    "PyroVAEError",
    "StandardNormalPrior",
    "TrainConfig",
    "TrainResult",
    "binarize",
    "build_networks",
    "build_vae",
    "heldout_loss",
    "load_data",
    "load_run",
    "make_elbo",
    "train",
]
