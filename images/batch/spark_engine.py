"""The batch job's Spark engine: scores pyarrow Tables with an MLflow model on a Spark master.

The model is applied with ``mlflow.pyfunc.spark_udf(env_manager="local")``: executors run the
image's own Python and packages (PYSPARK_PYTHON), so no environment is built at run time. Tables go
to Spark and back through Arrow, and come back in their rows' order.

    scorer = SparkScorer("/tmp/model", columns, master="spark://spark-master:7077")
    try:
        predictions = scorer.predict(table)   # numpy float64, one per row
    finally:
        scorer.close()
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import numpy
    import pyarrow

# How long the spark:// master may take to accept a TCP connection: Spark's own client would retry
# for a minute or more before it gives up.
CONNECT_TIMEOUT_S = 5.0
# Rows per Arrow batch that the model's pandas UDF gets (Spark's default is 10,000). MLflow's UDF
# has a fixed cost per batch: on 1M rows of 11 columns, 100,000 made scoring about 6x faster.
ARROW_BATCH_ROWS = 100_000


class SparkUnreachable(Exception):
    """The spark:// master does not accept connections (its message is one line, for the user)."""


def check_master(master: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raises SparkUnreachable unless a spark://host:port master (or one of a comma-separated list,
    as a standby setup has) accepts a TCP connection within `timeout` seconds."""
    hosts = master.removeprefix("spark://").split(",")
    reason = "no host:port"
    for host_port in hosts:
        parts = urlsplit(f"//{host_port}")
        try:
            host, port = parts.hostname, parts.port or 7077
        except ValueError as exc:  # a port that is not a number
            raise SparkUnreachable(f"cannot reach SPARK_MASTER {master}: {exc}") from None
        if not host:
            continue
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return
        except socket.gaierror as exc:
            reason = f"unknown host {host} ({exc.strerror})"
        except TimeoutError:
            reason = f"no answer from {host}:{port} within {timeout:g} s"
        except OSError as exc:
            reason = f"{host}:{port}: {exc.strerror or exc}"
    raise SparkUnreachable(f"cannot reach SPARK_MASTER {master}: {reason}")


class SparkScorer:
    """Scores pyarrow Tables with mlflow.pyfunc.spark_udf(env_manager="local") on a Spark master."""

    def __init__(self, model_path: str, columns: list[str], master: str, app_name: str = "devstack-batch"):
        """Starts a SparkSession on `master` ("local[*]" or "spark://host:port") and builds the
        model's UDF from the local model folder `model_path`; `columns` are the model's inputs, in
        the order the UDF gets them. Raises SparkUnreachable if a spark:// master does not answer."""
        cluster = master.startswith("spark://")
        if cluster:
            check_master(master)  # before Spark: its client would retry for a minute or more
        # Imported here, so that importing this module (and SparkUnreachable) needs no Spark.
        import mlflow.pyfunc
        from pyspark.sql import SparkSession

        builder = (
            SparkSession.builder.master(master)
            .appName(app_name)
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.ui.enabled", "false")
            # Arrow both ways: createDataFrame from Arrow data, toArrow, and the pandas UDF's batches.
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.sql.execution.arrow.pyspark.fallback.enabled", "false")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH_ROWS))
        )
        if cluster:
            # Executors connect back to the driver: give them an address they can reach (in Compose,
            # this container's IP on the stack's network), and listen on every interface.
            driver_host = os.environ.get("SPARK_DRIVER_HOST") or socket.gethostbyname(socket.gethostname())
            builder = builder.config("spark.driver.host", driver_host).config("spark.driver.bindAddress", "0.0.0.0")
        else:
            # Local mode: everything in this process; never listen beyond the loopback.
            builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
        # PySpark 4.2 warns on every conversion that it "does not yet fully support pandas >= 3.0.0";
        # the stack pins pandas 3 and the results are checked against the model's own predictions.
        # (The image sets the same filter in PYTHONWARNINGS, for the executors' Python workers.)
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        self.columns = list(columns)
        self._spark = builder.getOrCreate()
        self._spark.sparkContext.setLogLevel("WARN")
        # env_manager="local" is the point (executors run this image's venv): not MLflow's warning about it.
        pyfunc_logger = logging.getLogger("mlflow.pyfunc")
        level = pyfunc_logger.level
        pyfunc_logger.setLevel(logging.ERROR)
        try:
            self._udf = mlflow.pyfunc.spark_udf(self._spark, model_path, result_type="double", env_manager="local")
        finally:
            pyfunc_logger.setLevel(level)

    def predict(self, table: pyarrow.Table) -> numpy.ndarray:
        """The model's predictions for a pyarrow Table holding `columns` (float64): a float64 array,
        one value per row, in the table's row order (Spark keeps partition order for a
        createDataFrame -> select -> toArrow pipeline: no shuffle happens in between)."""
        import numpy as np
        from pyspark.sql.functions import struct

        frame = self._spark.createDataFrame(table.select(self.columns))
        # A struct keeps the column names: the pyfunc matches them to the model's signature.
        scored = frame.select(self._udf(struct(*self.columns)).alias("prediction"))
        result = scored.toArrow()
        return result.column("prediction").to_numpy().astype(np.float64, copy=False)

    def executors(self) -> int:
        """Executors registered with the driver now: 0 in local mode; on a cluster, not counting
        the driver (whose block manager Spark lists among them)."""
        if self._spark.sparkContext.master.startswith("local"):
            return 0
        status = self._spark.sparkContext._jsc.sc().getExecutorMemoryStatus()
        return max(status.size() - 1, 0)

    def close(self) -> None:
        """Stops the SparkSession (and, on a cluster, releases the executors)."""
        if self._spark is not None:
            self._spark.stop()
            self._spark = None
