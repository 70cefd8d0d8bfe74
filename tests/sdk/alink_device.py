"""A device built with Alibaba's Link Kit SDK (aliyun-iot-linkkit 1.2.13), used unchanged.

Prints one JSON object per line on stdout for the test that runs it:
  {"event": "connected"} / {"event": "connect_failed"}
  {"event": "firmware", "notice": 1|2, "version": ..., "url": ..., ...}
  {"event": "downloaded", "ok": true|false, "rc": <SDK return code>}
  {"event": "done"}
"""
import argparse
import hashlib
import hmac
import json
import os
import sys
import tempfile
import threading
import time

from linkkit import linkkit


def emit(**kw):
    print(json.dumps(kw), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pk", required=True)
    ap.add_argument("--dn", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--module", default=None)
    ap.add_argument("--mode", choices=["connect", "push", "pull", "fail"], default="push")
    ap.add_argument("--fail-step", default="-2")
    ap.add_argument("--sign", choices=["hmacsha1", "hmacsha256", "hmacmd5"], default="hmacsha1",
                    help="hmacsha1 is what the SDK signs with; the others go through its "
                         "verbatim credentials mode, as other Link SDKs sign")
    ap.add_argument("--tls-ca", default=None, help="CA certificate (PEM) that signs the broker's certificate")
    ap.add_argument("--self-subscribe", action="store_true",
                    help="subscribe to the downlink topics with the SDK's subscribe_topic, as "
                         "devices must on an external broker that does not subscribe them")
    ap.add_argument("--pull-when", default=None,
                    help="pull only once this file exists (the test creates it when the offer is set)")
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()

    kwargs = {}
    if a.sign != "hmacsha1":
        ts = str(int(time.time() * 1000))
        cid = "%s&%s" % (a.pk, a.dn)
        content = "clientId%sdeviceName%sproductKey%stimestamp%s" % (cid, a.dn, a.pk, ts)
        algo = {"hmacsha256": hashlib.sha256, "hmacmd5": hashlib.md5}[a.sign]
        kwargs = dict(
            client_id="%s|securemode=%d,signmethod=%s,timestamp=%s|" % (cid, 2 if a.tls_ca else 3, a.sign, ts),
            username="%s&%s" % (a.dn, a.pk),
            password=hmac.new(a.secret.encode(), content.encode(), algo).hexdigest(),
        )
    lk = linkkit.LinkKit(host_name="cn-shanghai", product_key=a.pk, device_name=a.dn,
                         device_secret=a.secret, **kwargs)
    if a.tls_ca:
        with open(a.tls_ca) as f:
            lk.config_mqtt(port=a.port, secure="TLS", endpoint=a.host, cadata=f.read())
    else:
        lk.config_mqtt(port=a.port, secure="", endpoint=a.host)

    connected = threading.Event()
    firmware = {}
    got_firmware = threading.Event()

    def on_connect(session_flag, rc, userdata):
        connected.set()

    def on_ota(notice, version, size, url, sign_method, sign, module, extra):
        firmware.update(notice=notice, version=version, size=size, url=url,
                        sign_method=sign_method, sign=sign, module=module, extra=extra)
        got_firmware.set()

    subscribed = threading.Event()

    def on_subscribe(mid, granted_qos, userdata):
        subscribed.set()

    lk.on_connect = on_connect
    lk.on_ota_message_arrived = on_ota
    lk.on_subscribe_topic = on_subscribe
    lk.connect_async()
    if not connected.wait(a.timeout if a.mode != "connect" else min(a.timeout, 8)):
        emit(event="connect_failed")
        lk.destroy()
        return 2
    emit(event="connected")
    if a.mode == "connect":
        lk.destroy()
        return 0
    if a.self_subscribe:
        lk.subscribe_topic([("/ota/device/upgrade/%s/%s" % (a.pk, a.dn), 1),
                            ("/sys/%s/%s/thing/ota/firmware/get_reply" % (a.pk, a.dn), 1)])
        if not subscribed.wait(a.timeout):
            emit(event="subscribe_failed")
            lk.destroy()
            return 4

    lk.ota_report_version(a.module, a.version)
    if a.mode == "pull":
        if a.pull_when:
            deadline = time.time() + a.timeout
            while not os.path.exists(a.pull_when) and time.time() < deadline:
                time.sleep(0.02)
        lk.query_ota_firmware(a.module)
    if not got_firmware.wait(a.timeout):
        emit(event="no_firmware")
        lk.destroy()
        return 3
    emit(event="firmware", **firmware)
    progress = "/ota/device/progress/%s/%s" % (a.pk, a.dn)
    lk.publish_topic(progress, json.dumps({"id": "101", "params": {"step": "10", "desc": "downloading"}}))
    path = os.path.join(tempfile.mkdtemp(), "firmware.bin")
    rc = lk.download_ota_firmware(firmware["url"], path, firmware["sign_method"], firmware["sign"])
    ok = rc == linkkit.LinkKit.ErrorCode.SUCCESS
    emit(event="downloaded", ok=ok, rc=str(rc))
    if a.mode == "fail" or not ok:
        step = a.fail_step if a.mode == "fail" else "-3"
        lk.publish_topic(progress, json.dumps({"id": "102", "params": {"step": step, "desc": "failed"}}))
    else:
        lk.publish_topic(progress, json.dumps({"id": "103", "params": {"step": "100", "desc": "upgrade finished"}}))
        lk.ota_report_version(a.module, firmware["version"])
    time.sleep(0.5)  # let the SDK's network thread flush the last publishes before exit
    emit(event="done")
    lk.destroy()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # report it where the test reads, then fail
        import traceback
        traceback.print_exc()
        emit(event="error", error=repr(e), traceback=traceback.format_exc()[-2000:])
        sys.exit(1)
