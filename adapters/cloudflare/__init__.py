"""Cloudflare: Magic Transit prefix advertisement, WAF list blocks, Under Attack Mode."""

from adapters.cloudflare.adapter import CloudflareAdapter

__all__ = ["CloudflareAdapter"]
