#!/usr/bin/env python3
"""`make batch`: scores a CSV or Parquet file of any size with a registered model, in chunks.

The file is read with pyarrow a chunk at a time, so memory stays bounded whatever its size. Each
chunk is scored as the model server scores a request: for the stack's scikit-learn models,
scoring_app.FastPath's decisions (the signature's columns picked by name, in any order; every value
checked; the same arithmetic, bit for bit); for any other model, MLflow's pyfunc path. The output
is the input's columns plus `prediction`, as Parquet or CSV by its extension, written to a temporary
file and renamed at the end, so a failed or interrupted job leaves nothing (with --direct the caller
owns that: `make batch` writes into a file it made and renames it itself).

ENGINE=spark hands each chunk to Apache Spark (spark_engine.py, mlflow.pyfunc.spark_udf) instead:
the same reading, checks and writing, the scoring on Spark's executors.
"""

import argparse
import os
import resource
import shutil
import signal
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from mlflow.types.schema import DataType

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
PREDICTION = "prediction"
DELIMITERS = ",;\t|"
ARROW_TYPES = {DataType.double: pa.float64(), DataType.float: pa.float32(), DataType.long: pa.int64(),
               DataType.integer: pa.int32()}
# Rows per chunk: enough to make each chunk's fixed costs small, few enough that memory stays flat.
# Spark pays a job per chunk (tenths of a second), so its chunks are larger.
CHUNK_ROWS = {"python": 131_072, "spark": 524_288}
# A CSV block of this many bytes per chunk holds about CHUNK_ROWS rows of a dozen numeric columns.
CSV_BLOCK_BYTES = {"python": 16 << 20, "spark": 64 << 20}
PROGRESS_SECONDS = {"bar": 0.25, "lines": 5.0}
# What pyarrow's CSV reader takes for a missing value (its ConvertOptions default).
NULL_VALUES = set(pacsv.ConvertOptions().null_values)


class BadInput(Exception):
    """What is wrong with the input, in one line that names the column and row where it applies."""


class Interrupted(BaseException):
    """SIGTERM: stop as Ctrl-C would, through every finally."""


def file_format(path, what):
    extension = os.path.splitext(path)[1].lower()
    if extension not in FORMATS:
        raise BadInput(f"{what}={path}: unknown format '{extension or '(no extension)'}': use a .csv or .parquet file")
    return FORMATS[extension]


def sniff_delimiter(head):
    """The delimiter of a CSV file's header line: the one of , ; tab | it has most of, outside quotes."""
    line = head.splitlines()[0].decode("utf-8", "replace") if head else ""
    counts, quoted = dict.fromkeys(DELIMITERS, 0), False
    for character in line:
        if character == '"':
            quoted = not quoted
        elif not quoted and character in counts:
            counts[character] += 1
    best = max(DELIMITERS, key=counts.get)
    return best if counts[best] else ","


class CsvInput:
    """A CSV file as Arrow record batches, a block of lines at a time: the file is cut at the last
    line end of each block and each block parsed on its own (on all cores), which keeps memory flat
    whatever the file's size. (pyarrow's streaming reader held more the larger the file: 300 MB at
    1M rows, 690 MB at 4M, here.) Lines hold no line breaks in values, as pyarrow assumes too.
    `types` fixes the given columns' types (the signature's); the others are inferred from the first
    block and held to that for the rest of the file."""

    line_offset = 1  # the header

    def __init__(self, path, types, block_bytes):
        self.path, self.types, self.block_bytes = path, dict(types), block_bytes
        self.signature = set(types)
        self.size = os.path.getsize(path)
        self.file = open(path, "rb")
        self.header = self.file.readline()
        if self.header.startswith(b"\xef\xbb\xbf"):  # a byte order mark, as spreadsheets write them
            self.header = self.header[3:]
        if not self.header.strip():
            raise BadInput(f"IN={path} is empty")
        if not self.header.endswith(b"\n"):
            self.header += b"\n"
        self.parse = pacsv.ParseOptions(delimiter=sniff_delimiter(self.header))
        self.consumed, self.rest, self.first_row = self.file.tell(), b"", 1
        self.pending = self.next_block()
        self.schema = self.pending.schema if self.pending is not None else self.parse_block(b"").schema
        # The rest of the file is read as the first block was: a value that does not fit is an error.
        self.types = {field.name: field.type if field.type != pa.null() else pa.string() for field in self.schema}

    def lines(self):
        """The next block of whole lines (bytes), or None at the end of the file."""
        while True:
            data = self.file.read(self.block_bytes)
            if not data:
                block, self.rest = self.rest, b""
                return block or None
            data = self.rest + data
            cut = data.rfind(b"\n") + 1
            if cut:  # else one line is longer than a block: read on
                self.rest = data[cut:]
                return data[:cut]
            self.rest = data

    def parse_block(self, block, types=None):
        return pacsv.read_csv(pa.py_buffer(self.header + block), parse_options=self.parse,
                              convert_options=pacsv.ConvertOptions(column_types=types or self.types))

    def next_block(self):
        block = self.lines()
        if block is None:
            return None
        try:
            table = self.parse_block(block)
        except pa.ArrowInvalid as error:
            self.explain(block, error)
        self.consumed += len(block)
        self.first_row += table.num_rows
        return table

    def batches(self):
        while self.pending is not None:
            table, self.pending = self.pending, None
            yield from table.combine_chunks().to_batches()
            self.pending = self.next_block()

    def done(self, rows):
        return self.consumed / self.size if self.size else 1.0

    def explain(self, block, error):
        """pyarrow's conversion errors name a column by number and a row within a block: parse the
        block again as text, and name the first value that does not fit, by its row in the file."""
        try:
            text = self.parse_block(block, {name: pa.string() for name in self.types})
        except pa.ArrowInvalid as other:  # not even as text: a ragged line, say
            raise BadInput(f"IN={self.path}: {str(other).splitlines()[0]}") from None
        for name, target in self.types.items():
            if name in self.signature:
                cast(text.column(name), target, name, self.first_row, self.line_offset)
                continue
            for index, value in enumerate(text.column(name).to_pylist()):  # the other columns may be empty
                if value and value.strip() and value not in NULL_VALUES and not fits(value, target):
                    raise BadInput(f"{where(self.first_row + index, self.line_offset)}, column '{name}': {value!r} "
                                   f"does not fit the type its first rows gave the column ({target})") from None
        raise BadInput(f"IN={self.path}: {str(error).splitlines()[0]}") from None

    def close(self):
        self.file.close()


class ParquetInput:
    line_offset = None

    def __init__(self, path, batch_rows):
        self.path = path
        if os.path.getsize(path) == 0:
            raise BadInput(f"IN={path} is empty")
        try:
            self.file = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as error:
            raise BadInput(f"IN={path} is not a Parquet file ({str(error).splitlines()[0]})") from None
        self.schema = self.file.schema_arrow
        self.rows = self.file.metadata.num_rows
        self.batch_rows = batch_rows

    def batches(self):
        return self.file.iter_batches(batch_size=self.batch_rows)

    def done(self, rows):
        return rows / self.rows if self.rows else 1.0

    def close(self):
        self.file.close()


def fits(value, target):
    try:
        pc.cast(pa.array([value]), target)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


def cast(column, target, name, first_row, line_offset):
    """column as `target`, or BadInput naming the first value that is not one (its row, 1-based)."""
    if column.type != target:
        try:
            column = pc.cast(column, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
            for index, value in enumerate(column.to_pylist()):
                try:
                    pc.cast(pa.array([value], type=column.type), target)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    if value is None or (isinstance(value, str) and not value.strip()):
                        raise BadInput(f"{where(first_row + index, line_offset)}, column '{name}': no value") from None
                    kind = "a number" if pa.types.is_floating(target) else f"a whole number ({target})"
                    raise BadInput(f"{where(first_row + index, line_offset)}, column '{name}': {value!r} is not "
                                   f"{kind}") from None
            raise
    if column.null_count:
        index = pc.index(pc.is_null(column), True).as_py()
        raise BadInput(f"{where(first_row + index, line_offset)}, column '{name}': no value")
    return column


def where(row, line_offset):
    return f"row {row:,}" + (f" (line {row + line_offset:,})" if line_offset else "")


class Model:
    """The columns a model needs and how a chunk of them is scored, as the model server decides."""

    def __init__(self, pyfunc_model):
        from scoring_app import FastPath
        self.pyfunc = pyfunc_model
        self.fast = FastPath.for_model(pyfunc_model)
        schema = pyfunc_model.metadata.get_input_schema()
        if self.fast:
            self.names, self.types = self.fast.names, [ARROW_TYPES[t] for t in self.fast.types]
        elif schema is not None and schema.has_input_names():
            self.names = schema.input_names()
            self.types = None
        else:
            self.names = self.types = None

    def arrow_types(self):
        return dict(zip(self.names, self.types)) if self.types else {}

    def check(self, schema):
        if PREDICTION in schema.names:
            raise BadInput(f"IN already has a column named '{PREDICTION}': rename or drop it")
        missing = [name for name in self.names or () if name not in schema.names]
        if missing:
            raise BadInput(f"IN has no column {', '.join(repr(n) for n in missing)}: the model needs "
                           f"{', '.join(repr(n) for n in self.names)}")

    def features(self, batch, first_row, line_offset):
        """The chunk's model columns, checked and converted, as a pyarrow Table."""
        if self.types is None:
            return batch.select(self.names) if self.names else batch
        columns = [cast(batch.column(name), target, name, first_row, line_offset)
                   for name, target in zip(self.names, self.types)]
        return pa.Table.from_arrays(columns, names=self.names)

    def predict(self, table):
        if self.fast is None:
            try:
                return predictions_of(self.pyfunc.predict(table.to_pandas()))
            except Exception as error:  # MLflow's own checks refused the data, or the model failed
                raise BadInput(f"the model could not score the rows: {str(error).splitlines()[0]}") from None
        columns = [table.column(i).to_numpy() for i in range(table.num_columns)]
        if self.fast.array_mode:
            return self.fast.predict(np.column_stack(columns))
        import pandas as pd
        return self.fast.predict(pd.DataFrame(dict(zip(self.names, columns))))


def predictions_of(result):
    """One prediction per row, from what a pyfunc model's predict returns."""
    import pandas as pd
    if isinstance(result, pd.DataFrame):
        if result.shape[1] != 1:
            raise BadInput(f"the model returns {result.shape[1]} columns per row; make batch writes one")
        result = result.iloc[:, 0]
    values = np.asarray(result)
    if values.ndim != 1:
        raise BadInput(f"the model returns an array of shape {values.shape}; make batch writes one value per row")
    return values


class Output:
    """The input's columns and the predictions, written as they come."""

    def __init__(self, path, fmt):
        self.path, self.fmt, self.writer, self.type = path, fmt, None, None

    def write(self, batch, predictions):
        array = pa.array(predictions)
        if self.type is None:
            self.type = array.type
        elif array.type != self.type:
            array = pc.cast(array, self.type)
        out = pa.RecordBatch.from_arrays([*batch.columns, array], names=[*batch.schema.names, PREDICTION])
        if self.writer is None:
            self.writer = (pq.ParquetWriter(self.path, out.schema) if self.fmt == "parquet"
                           else pacsv.CSVWriter(self.path, out.schema))
        self.writer.write_batch(out)

    def close(self):
        if self.writer is not None:
            self.writer.close()


class Progress:
    """Rows done and rows/s on stderr: a bar redrawn in place on a terminal, else a line now and then."""

    def __init__(self, mode, every=None):
        # The first line comes after `every` seconds: a small file shows only the last one.
        self.mode, self.every = mode, every or PROGRESS_SECONDS.get(mode, 0)
        self.started = self.shown = time.monotonic()

    def line(self, rows, fraction):
        seconds = max(time.monotonic() - self.started, 1e-9)
        text = f"{fraction:4.0%}  {rows:,} rows  {rows / seconds:,.0f} rows/s"
        if self.mode == "bar":
            filled = round(fraction * 30)
            text = f"[{'#' * filled}{'.' * (30 - filled)}] {text}"
        return f"batch: {text}"

    def update(self, rows, fraction):
        now = time.monotonic()
        if self.mode != "none" and now - self.shown >= self.every:
            self.shown = now
            self.show(rows, fraction)

    def show(self, rows, fraction, end=""):
        if self.mode == "bar":
            sys.stderr.write(f"\r{self.line(rows, fraction)}\033[K{end}")
        elif self.mode == "lines":
            sys.stderr.write(self.line(rows, fraction) + "\n")
        sys.stderr.flush()

    def finish(self, rows):
        if self.mode != "none":
            self.show(rows, 1.0, end="\n")


def score_file(model, scorer, source, target, out_format, engine, progress):
    """Reads source chunk by chunk, scores it and writes target; returns the rows scored."""
    in_format = file_format(source, "IN")
    types = model.arrow_types()
    reader = (CsvInput(source, types, CSV_BLOCK_BYTES[engine]) if in_format == "csv"
              else ParquetInput(source, CHUNK_ROWS[engine]))
    model.check(reader.schema)
    output = Output(target, out_format)
    rows = 0
    try:
        for batch in reader.batches():
            if batch.num_rows == 0:
                continue
            predictions = scorer(model.features(batch, rows + 1, reader.line_offset))
            if len(predictions) != batch.num_rows:
                raise BadInput(f"the model gave {len(predictions)} predictions for {batch.num_rows} rows")
            output.write(batch, predictions)
            rows += batch.num_rows
            progress.update(rows, reader.done(rows))
    finally:
        output.close()
        reader.close()
    if rows == 0:
        raise BadInput(f"IN={source} has no rows")
    return rows


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="batch_score.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--in", dest="source", required=True, metavar="PATH", help="a .csv or .parquet file")
    parser.add_argument("--out", required=True, metavar="PATH", help="a .csv or .parquet file (replaced if there)")
    parser.add_argument("--out-format", choices=("csv", "parquet"), help="default: by --out's extension")
    parser.add_argument("--direct", action="store_true",
                        help="write into --out itself (it exists: the caller made it and renames it when this ends)")
    parser.add_argument("--engine", choices=("python", "spark"), default="python")
    parser.add_argument("--spark-master", default="local[*]", help="local[*] or spark://host:port")
    parser.add_argument("--progress", choices=("bar", "lines", "none"), default="lines")
    parser.add_argument("--progress-every", type=float, metavar="SECONDS",
                        help=f"how often progress shows (default: {PROGRESS_SECONDS['bar']:g} s for a bar, "
                             f"{PROGRESS_SECONDS['lines']:g} s for lines)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # MLflow's download bar would garble the job's own progress on stderr.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    def stop(signum, frame):
        raise Interrupted

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    temporary = None
    scorer_close = None
    model_folder = tempfile.mkdtemp(prefix="model-")
    try:
        out_format = args.out_format or file_format(args.out, "OUT")
        file_format(args.source, "IN")
        if not os.path.isfile(args.source) or not os.access(args.source, os.R_OK):
            raise BadInput(f"IN={args.source} cannot be read (no such file, or no permission)")
        import mlflow
        from serve_model import fetch
        local_path, picked = fetch(args.model_uri, model_folder, who="batch")
        model = Model(mlflow.pyfunc.load_model(local_path))
        if args.engine == "spark":
            from spark_engine import SparkScorer, SparkUnreachable
            if model.names is None:
                raise BadInput("ENGINE=spark needs a model whose signature names its input columns")
            try:
                spark = SparkScorer(local_path, model.names, args.spark_master)
            except SparkUnreachable as error:
                raise BadInput(str(error)) from None
            scorer_close = spark.close

            def scorer(table):
                try:
                    return spark.predict(table)
                except Exception as error:  # Spark's errors are Java stack traces: their first line
                    raise BadInput(f"Spark could not score the rows: {str(error).strip().splitlines()[0]}") from None
        else:
            scorer = model.predict
        if args.direct:
            target = args.out
        else:
            folder, name = os.path.split(os.path.abspath(args.out))
            handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
            os.close(handle)
            target = temporary
        progress = Progress(args.progress, args.progress_every)
        scoring = time.monotonic()
        rows = score_file(model, scorer, args.source, target, out_format, args.engine, progress)
        progress.finish(rows)
        where_run = ""
        if args.engine == "spark":  # executors come and go: counted once they have worked
            where_run = (f", on Spark {args.spark_master}" + (f" ({spark.executors()} executors)"
                         if args.spark_master.startswith("spark://") else ""))
        if temporary:
            os.replace(temporary, args.out)
            temporary = None
    except BadInput as error:
        print(f"batch: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted):
        print("\nbatch: interrupted; nothing written", file=sys.stderr)
        return 130
    except (OSError, pa.ArrowException) as error:  # a full disk, a file that went away: one line too
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[0]
        print(f"batch: {reason}{where}; nothing written", file=sys.stderr)
        return 1
    finally:
        if temporary and os.path.exists(temporary):
            os.unlink(temporary)
        if scorer_close:
            scorer_close()
        shutil.rmtree(model_folder, ignore_errors=True)
    now = time.monotonic()
    seconds = max(now - scoring, 1e-9)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"batch: scored {rows:,} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s; {now - started:.1f} s "
          f"in all) with {picked}{where_run}; peak memory {peak:,.0f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
