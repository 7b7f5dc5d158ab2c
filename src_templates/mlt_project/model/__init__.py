from .classifier import ImageClassifier
from .network import Network, build_network, network_spec

__all__ = ["ImageClassifier", "Network", "build_network", "network_spec"]
