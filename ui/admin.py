"""Admin tab, for the operator only (the ``--auth`` login, or a users-file account added with ``--admin``): every
workspace's disk and trainings, the whole queue, and deleting a person's data."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from ui.people import People
from ui.text import escaped

WORKSPACE_COLUMNS = ["workspace", "disk MB", "photos", "models", "trainings waiting or running"]
JOB_COLUMNS = ["workspace", "model id", "status", "created", "started", "device", "node", "attempts"]


@dataclass
class AdminTab:
    tab: gr.Tab
    refresh: gr.Button
    workspaces: gr.Dataframe
    jobs: gr.Dataframe
    key: gr.Textbox
    delete: gr.Button


def layout() -> AdminTab:
    with gr.Tab("Admin", id="admin", visible=False) as tab:
        gr.Markdown("Every person's workspace and the training queue. Only operators see this tab.")
        refresh = gr.Button("Refresh")
        workspaces = gr.Dataframe(headers=WORKSPACE_COLUMNS, interactive=False, label="Workspaces")
        jobs = gr.Dataframe(headers=JOB_COLUMNS, interactive=False, label="Training queue (running, waiting, done)")
        with gr.Row(equal_height=True):
            key = gr.Textbox(label="Workspace to delete (its name in the table)", scale=3)
            delete = gr.Button("Delete this person's photos, models and outputs", variant="stop", scale=2)
    return AdminTab(tab, refresh, workspaces, jobs, key, delete)


def _operator_only(people: People, request: gr.Request) -> None:
    # Single mode has no operator view: there everyone would be "the local person".
    if not (people.per_person and people.person(request).admin):
        raise gr.Error("Only the app's operator may use the admin view.")


def _tables(people: People) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = [[u.key, round(u.bytes / 1e6, 1), u.photos, u.models, u.active_trainings]
            for u in people.workspaces.usage()]
    queue = [[j.payload.get("workspace", "local"), j.model_id, j.status, j.created_at[:19],
              (j.started_at or "")[:19], j.device or "", j.node[:8], j.attempts]
             for j in people.workspaces.jobs.list()]
    return pd.DataFrame(rows, columns=WORKSPACE_COLUMNS), pd.DataFrame(queue, columns=JOB_COLUMNS)


def wire(view: AdminTab, people: People) -> None:
    def overview(request: gr.Request) -> tuple[pd.DataFrame, pd.DataFrame]:
        _operator_only(people, request)
        return _tables(people)

    def remove(name: str, request: gr.Request) -> tuple[pd.DataFrame, pd.DataFrame]:
        _operator_only(people, request)
        name = (name or "").strip()
        if name not in people.workspaces.keys():
            raise gr.Error(f"No workspace is named {escaped(repr(name))}: copy its name from the table.")
        people.workspaces.delete(name)
        gr.Info(f"Deleted the workspace {escaped(name)}.")
        return _tables(people)

    tables = [view.workspaces, view.jobs]
    view.refresh.click(overview, None, tables, api_name="admin_overview")
    view.tab.select(overview, None, tables, api_name=False)
    view.delete.click(remove, view.key, tables, api_name="admin_delete_workspace",
                      js="(name) => confirm('Delete ' + name + ' and everything in it?') ? name : ''")


def build(people: People) -> gr.Tab:
    view = layout()
    wire(view, people)
    return view.tab
