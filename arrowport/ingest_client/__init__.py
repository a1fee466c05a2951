"""The client side of ``arrowport ingest``: read inputs and send them to a server.

* ``inputs``: open and read Arrow IPC, Parquet and CSV inputs (and stdin), a chunk at a time.
* ``http``, ``flight``: send one input as one request, over HTTP or Arrow Flight.
* ``send``: one input end to end, with retries.
* ``common``: exit codes, errors and the server target they share.

The command itself (options and output) is ``arrowport.cli_ingest``.
"""
