"""The Helm chart (charts/mlflow-devstack), rendered with helm and checked offline: no cluster, no Docker."""
