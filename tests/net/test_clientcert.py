"""A server refusing a missing or untrusted client certificate, told from other answers (pure)."""

from __future__ import annotations

from reconciler.net.clientcert import refusal_message, refused_alert, refused_page

NGINX_400 = (b"<html>\r\n<head><title>400 No required SSL certificate was sent</title></head>\r\n<body>\r\n"
             b"<center><h1>400 Bad Request</h1></center>\r\n<center>No required SSL certificate was sent</center>\r\n")


def test_nginx_pages_and_tls_alerts_are_refusals() -> None:
    assert refused_page(400, NGINX_400)
    assert refused_page(400, b"<center>The SSL certificate error</center>")
    assert not refused_page(400, b"bad request")
    assert not refused_page(200, NGINX_400)
    assert refused_alert("[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)")
    assert refused_alert("[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate")
    assert not refused_alert("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer")


def test_the_message_names_the_server_and_whether_a_certificate_was_sent() -> None:
    assert refusal_message("https://h/f.git", cert_sent=False, detail="HTTP 400") == \
        "https://h/f.git requires a client certificate and none is configured (HTTP 400)"
    assert refusal_message("https://h/f.git", cert_sent=True, detail="HTTP 400") == \
        "https://h/f.git refused the client certificate (HTTP 400)"
