"""A web-like process for the metrics tests: creates and enqueues workflows, counting them.

    PROMETHEUS_MULTIPROC_DIR=… python -m we_metrics_producer OK BAD

It counts into the same multiprocess directory as the worker, so the worker's
``/metrics`` shows the creations too, as with a web process and a worker that share it.
"""

from __future__ import annotations

import sys

from workflow_engine import WorkflowEngine, metrics


def main(ok: int, bad: int) -> None:
    engine = WorkflowEngine.from_env()
    metrics.instrument(engine)
    engine.register_handler("ok", "we_test_handlers:record_success", max_retries=0)
    engine.register_handler("bad", "we_test_handlers:always_fail", max_retries=0)
    items = [{"workflow_type_id": "ok"}] * ok + [{"workflow_type_id": "bad"}] * bad
    engine.enqueue_many(engine.create_workflows(items))
    engine.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
