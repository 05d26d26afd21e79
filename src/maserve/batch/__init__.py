"""`maserve batch`: what ModelArts does with a batch service, on one machine.

The platform calls one api of the image once per input file (`mapping_type` file) or once per CSV
row (`mapping_type` csv, through a `mapping_rule`), and writes `infer-result-<task_id>/` with one
`<name>_result.txt` per input plus `infer-result-<task_id>.manifest`. This package does the same
against a running URL, a command it starts or an image it runs (the targets of `maserve check`):

    inputs.py   what --src-path names: a directory or a .manifest; reading a source (size limit)
    mapping.py  file mapping (the api's single file field) and csv mapping (the rule → JSON bodies)
    output.py   the output layout: atomic result files, manifest lines after them, resume, shards
    runner.py   concurrent requests over keep-alive connections, retries
    work.py     the inputs as a stream of requests, and what each answer writes
    job.py      the whole run: checks before anything is sent, the service's lifecycle, the progress bar, the summary
    cli.py      the command line (`maserve batch`, `maserve batch mapping-rule`)
"""

# Defaults of a run, here so that `maserve --help` and the parser need nothing heavier than this.
DEFAULT_CONCURRENCY = 16  # per URL: several requests per worker of a service with up to 8 workers
START_TIMEOUT = 1200.0  # the platform's deployment + start-up timeout (default 20 min)
STOP_TIMEOUT = 90.0  # ModelArts kills a container 90 s after SIGTERM
