"""Send the report by SMTP: multipart/alternative (plain text, then HTML with its charts as
inline multipart/related parts referenced by cid:)."""

from __future__ import annotations

import smtplib
import ssl
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from finops.config import MailSettings
from finops.report import Report


class MailError(Exception):
    """The report could not be sent: one line, never the password."""


def message(report: Report, mail: MailSettings) -> EmailMessage:
    msg = EmailMessage(policy=policy.SMTP.clone(max_line_length=998))  # headers unfolded
    msg["Subject"] = report.subject
    msg["From"] = mail.sender
    msg["To"] = ", ".join(mail.recipients)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain="finops")
    msg.set_content(report.text)
    msg.add_alternative(report.mail_html, subtype="html")
    html_part = msg.get_payload()[1]
    for name, png in report.images.items():
        html_part.add_related(
            png,
            maintype="image",
            subtype="png",
            cid=f"<{report.cid(name)}>",
            filename=f"{name}.png",
            disposition="inline",
        )
    return msg


def send(report: Report, mail: MailSettings) -> None:
    where = f"{mail.smtp_host}:{mail.smtp_port}"
    context = ssl.create_default_context(cafile=str(mail.ca_file) if mail.ca_file else None)
    try:
        if mail.security == "ssl":
            client = smtplib.SMTP_SSL(
                mail.smtp_host, mail.smtp_port, timeout=mail.timeout_seconds, context=context
            )
        else:
            client = smtplib.SMTP(mail.smtp_host, mail.smtp_port, timeout=mail.timeout_seconds)
        with client:
            if mail.security == "starttls":
                client.starttls(context=context)
            if mail.username:
                password = mail.password.get_secret_value() if mail.password else ""
                client.login(mail.username, password)
            refused = client.send_message(message(report, mail))
    except smtplib.SMTPAuthenticationError as e:
        raise MailError(
            f"mail not sent: {where} refused the login of {mail.username} ({e.smtp_code})"
        ) from None
    except smtplib.SMTPNotSupportedError as e:
        raise MailError(f"mail not sent: {where} does not support this: {e}") from None
    except (smtplib.SMTPException, ssl.SSLError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MailError(f"mail not sent via {where}: {reason}") from None
    if refused:
        raise MailError(f"mail not sent to {', '.join(refused)}: refused by {where}")
