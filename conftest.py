# Lets pytest import the project's packages (models, datasets, ...) from the repository root, and gives the
# test processes the scripts' OpenMP wait policy (utils/threads.py) before anything loads torch.
import utils.threads  # noqa: F401
