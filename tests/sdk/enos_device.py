"""A device built with the EnOS device SDK (enos-mqtt-sdk-python 0.1.1), used unchanged.

Prints one JSON object per line on stdout for the test that runs it:
  {"event": "connected"} / {"event": "connect_failed"}
  {"event": "informed", "code": 200}            (the SDK waited for our inform_reply)
  {"event": "firmware", "version": ..., "url": ..., "sign_method": ..., "sign": ..., "size": ...}
  {"event": "downloaded", "ok": true|false}
  {"event": "done"}
"""
import argparse
import hashlib
import json
import os
import sys
import threading
import time
import urllib.request

from enos.core.MqttClient import MqttClient
from enos.core.constant.DeliveryTopicFormat import DeliveryTopicFormat
from enos.core.constant.MethodConstants import MethodConstants
from enos.core.message.BaseRequest import BaseBuilder, BaseRequest
from enos.core.message.BaseResponse import BaseResponse
from enos.message.downstream.ota.OtaUpgradeCommand import OtaUpgradeCommand
from enos.message.downstream.ota.OtaUpgradeReply import OtaUpgradeReply
from enos.message.upstream.ota.OtaGetVersionRequest import OtaGetVersionRequest
from enos.message.upstream.ota.OtaProgressReportRequest import OtaProgressReportRequest
from enos.message.upstream.ota.OtaVersionReportRequest import OtaVersionReportRequest


def emit(**kw):
    print(json.dumps(kw), flush=True)


class OtaRequestResponse(BaseResponse):
    def get_match_topic_pattern(self):
        return "/sys/(.*)/(.*)/ota/device/request_reply"


class OtaRequest(BaseRequest):
    """ota.request: the SDK ships only its constants (0.1.1), so the device adds the class,
    as the protocol notes say a device application does."""

    def get_format_topic(self):
        return DeliveryTopicFormat.UPDATE_REQUEST_TOPIC_FMT

    def get_answer_type(self):
        return OtaRequestResponse()


class OtaRequestBuilder(BaseBuilder):
    def create_method(self):
        return MethodConstants.OTA_REQUEST

    def create_params(self):
        return {}

    def create_request_instance(self):
        return OtaRequest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pk", required=True)
    ap.add_argument("--dk", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--mode", choices=["connect", "push", "request", "getversion", "reject"], default="push")
    ap.add_argument("--sign", choices=["hmacsha1", "hmacsha256", "hmacmd5"], default="hmacsha256")
    ap.add_argument("--no-ack-upgrade", action="store_true", help="like the SDK samples: no upgrade_reply")
    ap.add_argument("--request-when", default=None,
                    help="send ota.request only once this file exists (the test creates it when the offer is set)")
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()

    client = MqttClient("tcp://%s:%d" % (a.host, a.port), a.pk, a.dk, a.secret)
    client.get_profile().set_sign_method(a.sign)
    client.get_profile().set_auto_reconnect(False)
    connected = threading.Event()
    firmware = {}
    got_firmware = threading.Event()

    def on_upgrade(command, args):
        fw = command.get_firmware_info()
        firmware.update(version=fw.version, url=fw.file_url, sign_method=fw.sign_method,
                        sign=fw.sign, size=fw.file_size)
        got_firmware.set()
        if a.no_ack_upgrade:
            return None
        return OtaUpgradeReply.builder().set_code(200).build()

    class ConnectCallback:
        # MqttClient.connect(callback) wants an object with these three methods.
        def on_connect(self):
            connected.set()

        def on_disconnect(self):
            pass

        def on_connect_failed(self):
            pass

    client.register_arrived_message_handler(OtaUpgradeCommand.get_class(), on_upgrade)
    client.connect(ConnectCallback())
    if not connected.wait(a.timeout if a.mode != "connect" else min(a.timeout, 8)):
        emit(event="connect_failed")
        client.close()
        return 2
    emit(event="connected")
    if a.mode == "connect":
        client.close()
        return 0

    # Sync publish: raises after the operation timeout if the server does not answer.
    r = client.publish(OtaVersionReportRequest.builder().set_version(a.version).build())
    emit(event="informed", code=r.get_code())

    if a.mode == "request":
        if a.request_when:
            deadline = time.time() + a.timeout
            while not os.path.exists(a.request_when) and time.time() < deadline:
                time.sleep(0.02)
        client.fast_publish(OtaRequestBuilder().build())
    if a.mode == "getversion":
        resp = client.publish(OtaGetVersionRequest.builder().build())
        data = resp.get_data() or []
        if not data:
            emit(event="no_firmware")
            client.close()
            return 3
        fw = data[0]
        firmware.update(version=fw["version"], url=fw["fileUrl"], sign_method=fw["signMethod"],
                        sign=fw["sign"], size=fw["fileSize"])
        got_firmware.set()
    if not got_firmware.wait(a.timeout):
        emit(event="no_firmware")
        client.close()
        return 3
    emit(event="firmware", **firmware)

    def progress(step, desc):
        resp = client.publish(OtaProgressReportRequest.builder().set_step(step).set_desc(desc).build())
        return resp.get_code()

    if a.mode == "reject":
        emit(event="progress", code=progress("-5", "user declined"))
        emit(event="done")
        client.close()
        return 0
    emit(event="progress", code=progress("10", "downloading"))
    body = urllib.request.urlopen(firmware["url"], timeout=a.timeout).read()
    algo = hashlib.md5 if firmware["sign_method"].lower() == "md5" else hashlib.sha256
    ok = algo(body).hexdigest() == firmware["sign"].lower() and len(body) == int(firmware["size"])
    emit(event="downloaded", ok=ok)
    if not ok:
        progress("-3", "verification failed")
    else:
        progress("100", "upgrade finished")
        client.publish(OtaVersionReportRequest.builder().set_version(firmware["version"]).build())
    emit(event="done")
    client.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # report it where the test reads, then fail
        import traceback
        traceback.print_exc()
        emit(event="error", error=repr(e), traceback=traceback.format_exc()[-2000:])
        sys.exit(1)
