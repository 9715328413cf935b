"""The words for why a run stopped before its items were done, and what to do about it: printed when a command
stops, and kept with the run (`runs`, `status`, the report) until a later command takes it up. Kept apart from
batchrun.progress (tqdm) so that reading commands start fast."""

from __future__ import annotations

from typing import Any

import orjson

from batchrun.events import Stop, StopReason


def _api(d: dict[str, Any]) -> str:
    return f"{d.get('status') or 'no response'} {d.get('error_type')}: {d.get('message')}"


def describe_stop(stop: Stop) -> str:
    """Why a run stopped before its items were done, and what to do about it: one line."""
    d = stop.detail
    run = stop.run_id
    resume = f"`batchrun resume {run}`"
    match stop.reason:
        case StopReason.FATAL_API:
            return (
                f"stopped: the API answered {_api(d)} -- every item would fail the same way, so the rest stay "
                f"pending (fix the key or account, then {resume})"
            )
        case StopReason.OUTAGE:
            return (
                f"stopped: nothing succeeded while an item used up its {d['attempts']} attempts (last: {_api(d)}); "
                f"the API looks down, unreachable or overloaded, so the rest stay pending ({resume} later)"
            )
        case StopReason.OVERLOADED:
            return (
                f"{d['items']} item(s) used up their attempts on the API's errors (rate limited, overloaded, failing "
                f"or unreachable): they are pending, not failed ({resume} later)"
            )
        case StopReason.INTERRUPTED if d.get("batches"):
            return f"interrupted: no batch was canceled; they keep processing at Anthropic ({resume} collects them)"
        case StopReason.INTERRUPTED:
            return f"interrupted: unfinished items are pending again ({resume} continues)"
        case StopReason.STORE_ERROR:
            return (
                f"stopped: the store could not be written ({d['error']}); results committed before stay, the rest "
                f"are pending (free disk space or fix the database's permissions, then {resume})"
            )
        case StopReason.BUG:
            return (
                f"stopped by an error in batchrun ({d['error']}); results committed before stay, the rest are pending "
                f"(rerun with --debug for the traceback and report it; {resume} continues)"
            )
        case StopReason.CANCEL_REQUESTED:
            return (
                "stopped: `batchrun cancel` was asked for this run; it cancels the batches and stores what they "
                f"finished ({resume} sends the rest later)"
            )
        case StopReason.BATCH_CANCELED:
            return f"canceled: {d['items']} item(s) not processed are pending ({resume} sends them)"
        case StopReason.NO_WAIT | StopReason.TIMEOUT | StopReason.CANCEL_TIMEOUT:
            return _still_open(stop)
        case StopReason.CREATE_FAILED:
            return (
                f"stopped: could not create batch {d['seq']}: {_api(d)} ({resume} checks whether it was created, "
                "then creates it if not)"
            )
        case StopReason.CREATE_REFUSED:
            return (
                f"stopped: the API refused batch {d['seq']} ({d['requests']} requests, {d['bytes']:,} bytes): "
                f"{_api(d)} (its items are pending again; fix the cause, then {resume})"
            )
        case StopReason.BUDGET:
            return (
                f"budget reached: ${d['spent']:.4f} of ${d['limit']:.4f} spent, {d.get('left', '?')} item(s) left "
                f"(the next request's worst case would go over); resume with a larger --max-cost: "
                f"`batchrun resume {run} --max-cost USD`"
            )
        case StopReason.LIMIT:
            return f"--limit {d['limit']} reached: {d.get('left', '?')} item(s) left ({resume} sends the rest)"
        case StopReason.UNKNOWN_MODEL:
            models = "; ".join(f"{model_missing(m)} (the API said: {message})" for m, message in d["models"].items())
            return (
                f"stopped: {models}: its items were not sent and stay pending (fix the model id in the job's model "
                "or routes, or --model, then submit with --new-run)"
            )
        case StopReason.INVALID_REQUESTS:
            return (
                f"stopped: the run's first {d['attempts']} requests all failed with {_api(d)} -- every item would; "
                "the rest were not sent (fix the job or the input, then submit with --new-run)"
            )
        case StopReason.SWITCH_ONLINE:
            return f"stopped at the deadline's switch time with batches open ({resume} cancels them and goes online)"
        case StopReason.API_CALL_FAILED:
            return f"stopped: could not {d['what']}: {_api(d)} (batches keep processing; {resume} tries again)"
    return f"stopped: {stop.reason}"


def model_missing(model: str) -> str:
    """The words for a model the API answers 404 for, the same in a run and in a dry run."""
    return f"model {model} does not exist (check the model name)"


def _still_open(stop: Stop) -> str:
    d = stop.detail
    why = {
        StopReason.NO_WAIT: "--no-wait",
        StopReason.TIMEOUT: f"--timeout {d['timeout'] or 0:g}s reached",
        StopReason.CANCEL_TIMEOUT: f"--timeout {d['timeout'] or 0:g}s reached while batches were being canceled",
    }[stop.reason]
    ids = d["open"]
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    return (
        f"{why}: {len(ids)} batch(es) still processing at Anthropic ({shown}); "
        f"`batchrun resume {stop.run_id}` collects their results when they end"
    )


def stop_record(stop: Stop) -> str:
    """A stop as the store keeps it with its run (JSON: its reason and the detail its words need)."""
    return orjson.dumps({"reason": str(stop.reason), "detail": stop.detail}, default=str).decode()


def stop_reason(record: str | None) -> str | None:
    """The reason code of a stop kept with a run, or None."""
    try:
        reason = orjson.loads(record)["reason"] if record else None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return reason if isinstance(reason, str) else None


def stored_stop(run_id: str, record: str | None) -> str | None:
    """The words for a stop kept with a run, or None when there is none (or it cannot be read back)."""
    if not record:
        return None
    try:
        kept = orjson.loads(record)
        return describe_stop(Stop(StopReason(kept["reason"]), run_id, dict(kept.get("detail") or {})))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None


def run_status_text(run_id: str, recorded: str, record: str | None) -> str:
    """A run's stored status in words: a stopped run says why and what to do, not just that it stopped."""
    words = stored_stop(run_id, record) if recorded in ("stopped", "interrupted") else None
    if words is None:
        return recorded
    if recorded == "stopped" and not words.startswith("stopped"):
        return f"stopped: {words}"
    return words
