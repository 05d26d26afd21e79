"""The request/response path under the ASGI entry (maserve.app), one module per job:

    calls.py    a route's compiled schemas; calling the model (its errors → ServiceError); the
                answer encoded once (UTF-8 JSON, checked against the response schema if asked)
    body.py     reading a request body within the size limit
    batcher.py  opportunistic batching for a model with predict_batch: one loop iteration's
                requests together, on the event loop while the model is quick, else on a thread
"""
