"""pyro_vae: variational autoencoders as Pyro models and guides, trained with SVI."""

from pyro_vae.config import TrainConfig
from pyro_vae.data import ImageData, binarize, load_data
from pyro_vae.errors import ConfigError, DataError, PyroVAEError
from pyro_vae.models import VAE, build_vae
from pyro_vae.objectives import IWAE_ELBO, kl_weight, make_elbo
from pyro_vae.parts.likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogistic,
    DiscretizedLogisticLikelihood,
    LaplaceLikelihood,
    NormalLikelihood,
    build_likelihood,
)
from pyro_vae.parts.nets import NETWORKS, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, build_networks
from pyro_vae.parts.priors import (
    PRIORS,
    LaplacePrior,
    LearnedNormalPrior,
    MixtureOfGaussiansPrior,
    StandardNormalPrior,
    StudentTPrior,
    VampPrior,
    build_prior,
)
from pyro_vae.pretrained import load_pretrained
from pyro_vae.runs import CheckpointError, LoadedRun, RunError, load_run, load_run_and_data
from pyro_vae.training import Interrupted, NonFiniteLoss, TrainResult, heldout_loss, resume, train

__version__ = "0.1.0"

__all__ = [
    "IWAE_ELBO",
    "LIKELIHOODS",
    "NETWORKS",
    "PRIORS",
    "VAE",
    "BernoulliLikelihood",
    "CheckpointError",
    "ConfigError",
    "ContinuousBernoulliLikelihood",
    "ConvDecoder",
    "ConvEncoder",
    "DataError",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "ImageData",
    "Interrupted",
    "LaplaceLikelihood",
    "LaplacePrior",
    "LearnedNormalPrior",
    "LoadedRun",
    "MLPDecoder",
    "MLPEncoder",
    "MixtureOfGaussiansPrior",
    "NonFiniteLoss",
    "NormalLikelihood",
    "PyroVAEError",
    "RunError",
    "StandardNormalPrior",
    "StudentTPrior",
    "TrainConfig",
    "TrainResult",
    "VampPrior",
    "binarize",
    "build_likelihood",
    "build_networks",
    "build_prior",
    "build_vae",
    "heldout_loss",
    "kl_weight",
    "load_data",
    "load_pretrained",
    "load_run",
    "load_run_and_data",
    "make_elbo",
    "resume",
    "train",
]
