"""Access control without a web service, and what a hook's answer decides; pure.

Signed URLs: a location that asks for them takes a publish or play only with
`?expires=UNIX_SECONDS&token=HEX`, where HEX is the lower-case hex HMAC-SHA256, keyed with the
location's `secret`, of the stream path and the expiry joined as `"/APP/NAME" + EXPIRES`
(`"/APP/INSTANCE/NAME"` when the URL names an instance). The same token serves every
protocol: the path is the stream's, never the URL's (`.flv`, `/index.m3u8` and the like do
not count). `rtmpmate-ctl sign` makes one.

Networks: `allow_*`/`deny_*` lists of CIDR blocks per location; a deny match refuses, and a
non-empty allow list refuses whatever it does not match.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qs

__all__ = ["Decision", "check_signature", "decide", "parse_networks", "permitted", "sign",
           "stream_path"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_OPTIONS: Final = 32


def stream_path(app: str, instance: str, name: str, default_instance: str) -> str:
    """The path a token signs: "/app/name", or "/app/instance/name" for another instance."""
    if instance == default_instance:
        return f"/{app}/{name}"
    return f"/{app}/{instance}/{name}"


def sign(secret: str, path: str, expires: int) -> str:
    return hmac.new(secret.encode(), f"{path}{expires}".encode(), hashlib.sha256).hexdigest()


def check_signature(secret: str, path: str, query: str, now: float) -> str | None:
    """None if the query carries a valid, unexpired token for path; else why not."""
    params = parse_qs(query, keep_blank_values=True)
    expires_text = (params.get("expires") or [""])[0]
    token = (params.get("token") or [""])[0]
    if not expires_text or not token:
        return "no signature (expires and token are required)"
    if not expires_text.isdigit():
        return "expires is not a number"
    expires = int(expires_text)
    if expires < now:
        return "the signature has expired"
    if not hmac.compare_digest(token.lower(), sign(secret, path, expires)):
        return "bad signature"
    return None


def parse_networks(items: tuple[str, ...]) -> tuple[Network, ...]:
    """CIDR blocks ("10.0.0.0/8", "::1", "127.0.0.1"); ValueError for a bad one."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items)


def permitted(address: str, allow: tuple[Network, ...], deny: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return not allow  # not an IP (a Unix socket): only an allow list can refuse it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in deny if net.version == ip.version):
        return False
    return not allow or any(ip in net for net in allow if net.version == ip.version)


@dataclass(frozen=True, slots=True)
class Decision:
    """What a hook's answer means: allow (with options), refuse, or redirect to `target`."""

    verdict: str  # "allow", "refuse" or "redirect"
    reason: str = ""
    target: str = ""  # redirect: the Location header, as given
    options: dict[str, object] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"


ALLOW: Final = Decision("allow")


def decide(status: int, location: str, body: bytes, content_type: str) -> Decision:
    """A hook's HTTP answer: 2xx allows (a JSON object body sets session options), 3xx with
    a Location redirects, anything else refuses."""
    if 200 <= status < 300:
        return Decision("allow", options=_options(body, content_type))
    if 300 <= status < 400 and location:
        return Decision("redirect", f"the hook redirected ({status})", location)
    return Decision("refuse", f"the hook answered {status}")


def _options(body: bytes, content_type: str) -> dict[str, object]:
    if "json" not in content_type.lower() or not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in list(value.items())[:MAX_OPTIONS]}
