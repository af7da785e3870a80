"""The reports and stats pages render for members (server side); another org's page is a 404."""
import pytest

from tests.reports.factories import ReportJobFactory

pytestmark = pytest.mark.django_db


def test_reports_page_lists_the_members_jobs(client, org_with_members, other_org):
    job = ReportJobFactory(organization=org_with_members.org, requested_by=org_with_members.member)
    ReportJobFactory(organization=org_with_members.org, requested_by=org_with_members.admin)
    client.force_login(org_with_members.member)
    page = client.get(f"/orgs/{org_with_members.org.id}/reports/")
    assert page.status_code == 200
    assert page.content.count(b"<tr data-job-id=") == 1 and f'data-job-id="{job.id}"'.encode() in page.content
    assert b'aria-current="page">Reports' in page.content
    assert client.get(f"/orgs/{other_org.org.id}/reports/").status_code == 404


def test_stats_page_renders(client, org_with_members, other_org):
    client.force_login(org_with_members.member)
    page = client.get(f"/orgs/{org_with_members.org.id}/stats/")
    assert page.status_code == 200 and b'id="chart-days"' in page.content
    assert client.get(f"/orgs/{other_org.org.id}/stats/").status_code == 404
