# Lets pytest import the project's packages (models, datasets, ...) from the repository root.
