-- wrk script: POSTs one KServe v2 inference request (one row of 16 features
-- for the example mlp model) as JSON. The same body works against Quiver and
-- against the Triton peer:
--
--   wrk -t1 -c32 -d10s -s bench/peers/wrk_post.lua --latency \
--       http://127.0.0.1:PORT/v2/models/mlp/infer
--
-- Non-2xx answers are counted by wrk ("Non-2xx or 3xx responses"); a run that
-- reports any is not a valid measurement.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"inputs":[{"name":"features","shape":[1,16],"datatype":"FP32",'
    .. '"data":[-0.8,-0.7,-0.6,-0.5,-0.4,-0.3,-0.2,-0.1,0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7]}]}'
