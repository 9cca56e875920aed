"""What changed between two configs, in the words the reload log uses. Pure."""

from __future__ import annotations

from proxy.config.model import Config


def describe_changes(old: Config, new: Config) -> list[str]:
    """Return one line per added, removed or changed site, in the new file's order, removals last.

    `+ app3.localhost -> 127.0.0.1:3001`, `- app1.localhost`, `~ api.localhost: 8000 -> 8001`.
    """
    before = {site.host: site for site in old.sites}
    after = {site.host: site for site in new.sites}
    lines: list[str] = []
    for host, site in after.items():
        previous = before.get(host)
        if previous is None:
            lines.append(f"+ {host} -> {site.describe(as_written=True)}")
        elif not site.same_routing(previous):
            old_text, new_text = previous.describe(as_written=True), site.describe(as_written=True)
            if old_text == new_text:  # only an option such as preserve_host or connect_timeout changed
                lines.append(f"~ {host}: settings changed ({new_text})")
            else:
                lines.append(f"~ {host}: {old_text} -> {new_text}")
    lines += [f"- {host}" for host in before if host not in after]
    if old.listen_http != new.listen_http:
        lines.append(f"~ listen.http: {old.listen_http} -> {new.listen_http}")
    return lines
