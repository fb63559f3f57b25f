"""Swiss roll in 2-D (no closed-form density): test ELBO in nats, scatter plots of samples."""
from configs import gmm2d


def get_config():
    c = gmm2d.get_config()
    c.data.name = "swissroll"
    return c
