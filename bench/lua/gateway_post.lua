-- wrk script of bench/gateway.sh: POST /requests with a JSON body and the bearer key in $KEY.
wrk.method = "POST"
wrk.body = '{"request_type": "bench"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEY")
