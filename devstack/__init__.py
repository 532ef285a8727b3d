"""mlflow-devstack's host layer: the settings and the commands the Makefile runs. Standard library
only, Python 3.9 and newer (a stock Mac's python3)."""
