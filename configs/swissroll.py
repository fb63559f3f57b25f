"""Swiss roll in 2-D (no closed-form density): the gmm2d settings on other data; test ELBO in nats."""

import os
import runpy


def get_config():
    gmm2d = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "gmm2d.py"))
    c = gmm2d["get_config"]()
    c.data.name = "swissroll"
    return c
