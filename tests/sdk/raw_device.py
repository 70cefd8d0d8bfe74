"""A bare paho-mqtt client with Link Kit credentials (HMAC-SHA1, as the SDK signs), for what
the SDKs never do on their own: malformed and foreign messages, and connect storms.

Modes:
  publish  --messages FILE   publish each [topic, payload] of the JSON list at QoS 1, then
                             report {"event": "published", "count": N}
  kick                       two sessions of the device at once (SDK client ids carry a
                             timestamp, so they differ): the older must be disconnected, and
                             the push answering the newer's report must reach only the newer;
                             report {"event": "kick", "older_disconnected": .., "older_pushes": ..,
                             "newer_pushes": ..}
  hold                       stay connected until the server ends the session, then try to
                             come back with the same secret; report {"event": "held",
                             "disconnected": .., "reconnected": ..}
  fixed    --cycles N        N sessions back to back with one fixed client id (as Alibaba's C
                             SDK reconnects), each opened while the previous one is still up
                             (the broker takes the older over), then hold the last until the
                             server ends it; report {"event": "connected", "sessions": N} when
                             all are up, then {"event": "fixed", "disconnected": ..}
  race     --cycles N        N back-to-back sessions, each with a fresh client id: connect,
                             publish a version report as the first message, wait for the push
                             the server sends in answer (never subscribing), disconnect;
                             report {"event": "race", "ok": .., "lost": .., "seconds": ..}
"""
import argparse
import hashlib
import hmac
import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt


def emit(**kw):
    print(json.dumps(kw), flush=True)


def credentials(pk, dn, secret, n):
    ts = str(int(time.time() * 1000) + n)
    cid = "%s&%s" % (pk, dn)
    content = "clientId%sdeviceName%sproductKey%stimestamp%s" % (cid, dn, pk, ts)
    return (
        "%s|securemode=3,signmethod=hmacsha1,timestamp=%s|" % (cid, ts),
        "%s&%s" % (dn, pk),
        hmac.new(secret.encode(), content.encode(), hashlib.sha1).hexdigest(),
    )


def session(a, n, on_message=None, on_disconnect=None):
    cid, user, pw = credentials(a.pk, a.dn, a.secret, n)
    c = mqtt.Client(client_id=cid, clean_session=True, protocol=mqtt.MQTTv311)
    c.username_pw_set(user, pw)
    # a kicked session must not come straight back and kick the newer one in turn
    c.reconnect_delay_set(min_delay=120, max_delay=120)
    answered = threading.Event()
    result = {}

    def on_connect(cl, u, f, rc):
        result["rc"] = rc
        answered.set()

    c.on_connect = on_connect
    if on_disconnect:
        c.on_disconnect = on_disconnect
    if on_message:
        c.on_message = on_message
    c.connect(a.host, a.port, keepalive=60)
    c.loop_start()
    # paho (unlike the vendor SDKs) reports a refused CONNACK, so a refusal is known at once
    if not answered.wait(10) or result.get("rc") != 0:
        c.loop_stop()
        return None
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pk", required=True)
    ap.add_argument("--dn", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--mode", choices=["publish", "race", "kick", "hold", "fixed"], required=True)
    ap.add_argument("--messages")
    ap.add_argument("--publish-when", default=None,
                    help="publish only once this file exists (the test creates it when ready)")
    ap.add_argument("--cycles", type=int, default=300)
    a = ap.parse_args()

    if a.mode == "publish":
        with open(a.messages) as f:
            messages = json.load(f)
        c = session(a, 0)
        if c is None:
            emit(event="connect_failed")
            return 2
        emit(event="connected")
        if a.publish_when:
            deadline = time.time() + 30
            while not os.path.exists(a.publish_when) and time.time() < deadline:
                time.sleep(0.02)
        for topic, payload in messages:
            c.publish(topic, payload.encode() if isinstance(payload, str) else bytes(payload), qos=1).wait_for_publish(10)
        emit(event="published", count=len(messages))
        time.sleep(0.2)
        c.disconnect()
        c.loop_stop()
        return 0

    inform = "/ota/device/inform/%s/%s" % (a.pk, a.dn)
    if a.mode == "hold":
        ended = threading.Event()
        c = session(a, 0, on_disconnect=lambda cl, u, rc: ended.set())
        if c is None:
            emit(event="connect_failed")
            return 2
        emit(event="connected")
        gone = ended.wait(30)
        c.loop_stop()
        again = session(a, 1)
        emit(event="held", disconnected=gone, reconnected=again is not None)
        if again is not None:
            again.disconnect()
            again.loop_stop()
        return 0
    if a.mode == "fixed":
        ended = threading.Event()
        sessions = []
        for n in range(a.cycles):
            last = n == a.cycles - 1
            # n=0 each time: the same timestamp, so the same client id and password
            c = session(a, 0, on_disconnect=(lambda cl, u, rc: ended.set()) if last else None)
            if c is None:
                emit(event="connect_failed", cycle=n)
                return 2
            sessions.append(c)
        emit(event="connected", sessions=len(sessions))
        gone = ended.wait(30)
        for c in sessions:
            c.loop_stop()
        emit(event="fixed", disconnected=gone)
        return 0
    if a.mode == "kick":
        pushes = {"older": 0, "newer": 0}
        older_gone = threading.Event()
        newer_got = threading.Event()

        def on_older(cl, u, m):
            pushes["older"] += 1

        def on_newer(cl, u, m):
            pushes["newer"] += 1
            newer_got.set()

        older = session(a, 0, on_message=on_older, on_disconnect=lambda cl, u, rc: older_gone.set())
        newer = session(a, 1, on_message=on_newer)
        if older is None or newer is None:
            emit(event="connect_failed")
            return 2
        gone = older_gone.wait(10)
        newer.publish(inform, json.dumps({"id": 1, "params": {"version": "1.0.0"}}), qos=1)
        newer_got.wait(10)
        time.sleep(0.3)  # a second copy, if one were sent to the older session, would be here by now
        emit(event="kick", older_disconnected=gone, older_pushes=pushes["older"], newer_pushes=pushes["newer"])
        newer.disconnect()
        newer.loop_stop()
        older.loop_stop()
        return 0

    ok = lost = 0
    start = time.time()
    for n in range(a.cycles):
        got = threading.Event()
        c = session(a, n, on_message=lambda cl, u, m: "/ota/device/upgrade/" in m.topic and got.set())
        if c is None:
            lost += 1
            continue
        c.publish(inform, json.dumps({"id": 1, "params": {"version": "1.0.%d" % n}}), qos=1)
        if got.wait(10):
            ok += 1
        else:
            lost += 1
        c.disconnect()
        c.loop_stop()
    emit(event="race", ok=ok, lost=lost, seconds=round(time.time() - start, 2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # report it where the test reads, then fail
        import traceback
        traceback.print_exc()
        emit(event="error", error=repr(e), traceback=traceback.format_exc()[-2000:])
        sys.exit(1)
