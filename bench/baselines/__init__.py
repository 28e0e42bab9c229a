"""What a user would write by hand: one image a request, decode + model + stdlib JSON, no batching.

Both apps read BENCH_MODEL_DIR (an exported model folder) and return the global-average-pooled vector of
every exposed layer, i.e. the same work as the service's default request.
"""
