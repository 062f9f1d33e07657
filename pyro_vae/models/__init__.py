"""Model families, each a Pyro model/guide pair with the same interface (``model``, ``guide``,
``kl_weight``, ``registration``, ``decode_mean``, ``reconstruct``, ``sample``): the one-layer
:class:`VAE` and the hierarchical :class:`HierarchicalVAE` (ladder or bottom-up inference)."""

from pyro_vae.models.build import build_vae, build_vae_from_config
from pyro_vae.models.hierarchy import HierarchicalVAE, precision_merge
from pyro_vae.models.vae import VAE, DataPlate

__all__ = ["VAE", "DataPlate", "HierarchicalVAE", "build_vae", "build_vae_from_config", "precision_merge"]
