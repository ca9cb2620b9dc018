"""What `mockehr up` prints once every service is ready."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from mockehr.demo import DemoUser
from mockehr.stack import SERVICES, Stack


def print_summary(console: Console, stack: Stack, users: list[DemoUser], seconds: float) -> None:
    data = stack.data_dir.resolve()
    services = Table("service", "URL", title=f"mockehr is up ({seconds:.1f} s)", title_justify="left")
    for service in SERVICES:
        services.add_row(service.name, stack.url(service.name))
    console.print(services)
    console.print(f"CA certificate  {data / 'ca.pem'}   (curl --cacert …, SSL_CERT_FILE=…)", highlight=False)
    console.print(
        f"admin token     {(data / 'admin-token').read_text().strip()}   (also in {data / 'admin-token'})",
        highlight=False,
    )
    console.print(f"database        {stack.db_url.split('@')[-1]}", highlight=False)
    console.print(f"logs            {data / 'logs'}", highlight=False)
    if users:
        table = Table("user", "login", "password", "patients (first 3)", title="demo users", title_justify="left")
        for user in users:
            patients = ", ".join(f"Patient/{p}" for p in user.patients[:3])
            table.add_row(user.fhir_user, user.username, user.password, patients)
        console.print(table)
    console.print("Ctrl-C stops every service.")
