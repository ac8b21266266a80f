"""Prompt, queue, history, jobs, interrupt and free: ComfyUI's shapes, over the durable store."""
from __future__ import annotations

import logging
import uuid

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from engine.errors import WorkflowError, envelope, internal_error

from .bodies import ClearDelete, PromptBody, parse
from .http import JSON, dumps, qint, read_json, svc
from .store import Item, now_ms

log = logging.getLogger("loom.server")
STRIP_EXTRA = ("auth_token_comfy_org", "api_key_comfy_org")
JOB_STATUS = {"pending": "pending", "running": "in_progress", "success": "completed", "error": "failed",
              "crashed": "failed", "interrupted": "cancelled"}


def _bad_prompt(type_: str, message: str, details: str = "") -> JSON:
    return JSON(envelope(type_, message, details), status_code=400)


async def post_prompt(request: Request) -> Response:
    s = svc(request)
    try:
        raw = await read_json(request, s.config.max_json_bytes)
        if isinstance(raw, dict) and "prompt" not in raw:
            return _bad_prompt("no_prompt", "No prompt provided", "No prompt provided")
        body = parse(PromptBody, raw, "invalid_prompt")
    except HTTPException as e:  # ComfyUI's shape: {"error": {...}, "node_errors": {}}
        if isinstance(e.detail, dict):
            return JSON({"error": e.detail, "node_errors": {}}, status_code=e.status_code)
        if e.status_code == 400:
            return _bad_prompt("invalid_prompt", e.detail)
        raise
    prompt, number = body.prompt, body.number
    pid = body.prompt_id or str(uuid.uuid4())
    targets = None if body.partial_execution_targets is None else [str(t) for t in body.partial_execution_targets]
    extra = dict(body.extra_data or {})
    for k in STRIP_EXTRA:
        extra.pop(k, None)
    client_id = body.client_id
    if client_id is not None:
        extra["client_id"] = client_id
    extra["create_time"] = now_ms()
    front = bool(body.front)
    try:
        v, number, remaining = await run_in_threadpool(_admit, s, pid, prompt, targets, extra, number, front,
                                                       client_id)
    except WorkflowError as e:
        return JSON(e.to_dict(), status_code=400)
    except Exception as e:  # a bug in Loom, not in the workflow: say so, and keep the traceback
        log.exception("POST /prompt %s: internal error while validating or queueing", pid)
        return JSON(internal_error(e, "validation"), status_code=500)
    if v is None:
        return _bad_prompt("invalid_prompt", "prompt_id already used", pid)
    s.hub.status(remaining)
    return JSON({"prompt_id": pid, "number": int(number) if float(number).is_integer() else number,
                 "node_errors": v.node_errors})


def _admit(s, pid: str, prompt: dict, targets, extra: dict, number, front: bool, client_id) -> tuple:
    """Validate and enqueue one prompt, in a worker thread (never on the event loop, nor are the store's
    writes and its lock): (Validated, queue number, prompts remaining), or (None, None, None) when
    ``pid`` is taken. Raises ``WorkflowError`` for an invalid workflow; anything else is a Loom bug."""
    v = s.executor.prepare(prompt, targets)
    if s.store.exists(pid):
        return None, None, None
    number = s.store.add(pid, dumps(prompt), extra, list(v.outputs), number=number, front=front,
                         client_id=client_id)
    remaining = s.store.remaining()  # before the worker is woken: it includes this prompt
    s.worker.submit(pid, v)
    return v, number, remaining


async def get_prompt(request: Request) -> Response:
    return JSON({"exec_info": {"queue_remaining": svc(request).store.remaining()}})


async def get_queue(request: Request) -> Response:
    st = svc(request).store
    return JSON({"queue_running": [i.queue_tuple() for i in st.running()],
                 "queue_pending": [i.queue_tuple() for i in st.pending()]})


async def _clear_and_delete(request: Request, s) -> tuple[bool, list[str] | None]:
    """What POST /queue and POST /history ask for: (``clear`` set, ``delete`` ids or None); an empty body asks
    nothing. A body of another shape is a structured 400."""
    body = await read_json(request, s.config.max_json_bytes, allow_empty=True)
    b = parse(ClearDelete, {} if body is None else body)
    return bool(b.clear), b.ids()


async def post_queue(request: Request) -> Response:
    s = svc(request)
    clear, ids = await _clear_and_delete(request, s)
    if clear:
        s.store.delete_pending(None)
        s.worker.forget(None)
    if ids:
        s.store.delete_pending(ids)
        s.worker.forget(ids)
    s.hub.status(s.store.remaining())
    return Response(status_code=200)


def history_entry(i: Item) -> dict:
    r = i.result or {}
    return {"prompt": i.queue_tuple(), "outputs": r.get("outputs", {}), "status": r.get("status", {}),
            "meta": r.get("meta", {}), "loom": r.get("loom", {})}


async def get_history(request: Request) -> Response:
    st = svc(request).store
    items = st.history(qint(request, "max_items", None, 0), qint(request, "offset", 0, 0) or 0)
    return JSON({i.id: history_entry(i) for i in items})


async def get_history_one(request: Request) -> Response:
    i = svc(request).store.get(request.path_params["prompt_id"])
    if i is None or i.state != "done":
        return JSON({})
    return JSON({i.id: history_entry(i)})


async def post_history(request: Request) -> Response:
    s = svc(request)
    clear, ids = await _clear_and_delete(request, s)
    if clear:
        s.store.delete_history(None)
    if ids:
        s.store.delete_history(ids)
    return Response(status_code=200)


async def post_interrupt(request: Request) -> Response:
    s = svc(request)
    try:
        body = await read_json(request, 1 << 16, allow_empty=True)
    except Exception:  # an empty or invalid body is allowed: a global interrupt
        body = None
    pid = body.get("prompt_id") if isinstance(body, dict) else None
    s.worker.interrupt(str(pid) if isinstance(pid, (str, int)) else None)
    return Response(status_code=200)


async def post_free(request: Request) -> Response:
    s = svc(request)
    body = await read_json(request, 1 << 16, allow_empty=True)
    if body is not None and not isinstance(body, dict):
        return JSON({"error": "expected an object"}, status_code=400)
    body = body or {}
    s.worker.free(bool(body.get("unload_models")), bool(body.get("free_memory")))
    return Response(status_code=200)


async def get_events(request: Request) -> Response:
    """Loom: replay the messages of one prompt with seq > after."""
    s = svc(request)
    pid = request.path_params["prompt_id"]
    after = qint(request, "after", -1, -1)
    got = s.hub.events_after(pid, after)
    if got is None:
        i = s.store.get(pid)
        if i is None:
            return JSON({"error": "unknown prompt_id"}, status_code=404)
        msgs = ((i.result or {}).get("status") or {}).get("messages") or []
        return JSON({"prompt_id": pid, "done": i.state == "done", "complete": False,
                     "events": [{"seq": n, "type": t, "data": d} for n, (t, d) in enumerate(msgs) if n > after]})
    events, done = got
    return JSON({"prompt_id": pid, "done": done, "complete": True,
                 "events": [{"seq": n, "type": t, "data": d} for n, t, d in events]})


# -- jobs ------------------------------------------------------------------------------------------
def _outcome_status(i: Item) -> str:
    return JOB_STATUS[i.state] if i.state != "done" else JOB_STATUS.get(i.outcome or "error", "failed")


def _preview(outputs: dict) -> tuple[int, int, dict | None]:
    count = previewable = 0
    first = None
    for nid, ui in outputs.items():
        if not isinstance(ui, dict):
            continue
        for key, media in (("images", "images"), ("video", "video"), ("audio", "audio")):
            for f in ui.get(key) or ():
                count += 1
                if isinstance(f, dict) and "filename" in f:
                    previewable += 1
                    if first is None:
                        first = {"filename": f.get("filename"), "subfolder": f.get("subfolder", ""),
                                 "type": f.get("type", "output"), "nodeId": str(nid), "mediaType": media}
    return count, previewable, first


def job_item(i: Item, detail: bool = False) -> dict:
    r = i.result or {}
    outputs = r.get("outputs") or {}
    count, previewable, first = _preview(outputs)
    err = (r.get("loom") or {}).get("error")
    if err is not None:
        err = {**err, "node_id": str(err.get("node_id") or ""), "node_type": str(err.get("node_type") or "")}
    wf = (i.extra_data.get("extra_pnginfo") or {}).get("workflow") if isinstance(i.extra_data.get("extra_pnginfo"),
                                                                                  dict) else None
    job = {"id": i.id, "status": _outcome_status(i), "priority": i.number_out, "create_time": i.create_time,
           "execution_start_time": i.start_time, "execution_end_time": i.end_time,
           "execution_error": err if _outcome_status(i) == "failed" else None,
           "outputs_count": count, "previewable_outputs_count": previewable, "preview_output": first,
           "workflow_id": wf.get("id") if isinstance(wf, dict) and isinstance(wf.get("id"), str) else None}
    if detail:
        job.update({"outputs": outputs, "execution_status": r.get("status"),
                    "execution_meta": r.get("meta"), "loom": r.get("loom"),
                    "workflow": {"prompt": i.prompt, "extra_data": i.extra_data}})
    return job


async def get_jobs(request: Request) -> Response:
    st = svc(request).store
    wanted = {x.strip() for x in (request.query_params.get("status") or
                                  "pending,in_progress,completed,failed,cancelled").split(",") if x.strip()}
    states = {k for k, v in JOB_STATUS.items() if v in wanted and k in ("pending", "running")}
    outcomes = {k for k, v in JOB_STATUS.items() if v in wanted and k not in ("pending", "running")}
    limit = qint(request, "limit", 200, 0, 10_000)
    offset = qint(request, "offset", 0, 0)
    order = request.query_params.get("sort_order", "desc").lower() != "asc"
    sort_by = request.query_params.get("sort_by", "created_at")
    items, total = st.jobs(states, outcomes, limit, offset, order, sort_by)
    jobs = [job_item(i) for i in items]
    wid = request.query_params.get("workflow_id")
    if wid:
        jobs = [j for j in jobs if j["workflow_id"] == wid]
    return JSON({"jobs": jobs, "pagination": {"offset": offset, "limit": limit, "total": total,
                                              "has_more": offset + len(items) < total}})


async def get_job(request: Request) -> Response:
    i = svc(request).store.get(request.path_params["job_id"])
    if i is None:
        return JSON({"error": "job not found"}, status_code=404)
    return JSON(job_item(i, detail=True))


def _cancel(s, pid: str) -> bool:
    if s.store.delete_pending([pid]):
        s.worker.forget([pid])
        return True
    return s.worker.interrupt(pid)


async def post_job_cancel(request: Request) -> Response:
    s = svc(request)
    pid = request.path_params["job_id"]
    ok = _cancel(s, pid)
    s.hub.status(s.store.remaining())
    return JSON({"id": pid, "cancelled": ok})


async def post_jobs_cancel(request: Request) -> Response:
    s = svc(request)
    body = await read_json(request, s.config.max_json_bytes, allow_empty=True)
    ids: list = []
    if isinstance(body, dict):
        for k in ("job_ids", "ids", "prompt_ids"):
            if isinstance(body.get(k), list):
                ids = [str(x) for x in body[k] if isinstance(x, (str, int))]
                break
    elif isinstance(body, list):
        ids = [str(x) for x in body if isinstance(x, (str, int))]
    done = [pid for pid in ids if _cancel(s, pid)]
    s.hub.status(s.store.remaining())
    return JSON({"cancelled": done})


ROUTES = [
    ("/prompt", post_prompt, ["POST"]),
    ("/prompt", get_prompt, ["GET"]),
    ("/prompt/{prompt_id}/events", get_events, ["GET"]),
    ("/queue", get_queue, ["GET"]),
    ("/queue", post_queue, ["POST"]),
    ("/history", get_history, ["GET"]),
    ("/history", post_history, ["POST"]),
    ("/history/{prompt_id}", get_history_one, ["GET"]),
    ("/interrupt", post_interrupt, ["POST"]),
    ("/free", post_free, ["POST"]),
    ("/jobs", get_jobs, ["GET"]),
    ("/jobs/cancel", post_jobs_cancel, ["POST"]),
    ("/jobs/{job_id}", get_job, ["GET"]),
    ("/jobs/{job_id}/cancel", post_job_cancel, ["POST"]),
]
