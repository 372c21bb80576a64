"""The forms of the web pages (Flask-WTF).

Forms check only shape (present, not too long) so that a person gets a
message next to the field; every rule of the domain (normal form, safety,
roles, four eyes, lifecycle) is checked by the core, which the views call.
Every form that changes something carries a CSRF token; the two that do not
(filters sent with GET, and the public appeal form, which carries its own
signed, time-stamped token instead) say so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired, FileSize
from wtforms import (
    BooleanField,
    DateField,
    HiddenField,
    PasswordField,
    SelectField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import EqualTo, InputRequired, Length, Optional, Regexp

from app.domain import MAX_REF_LENGTH, MAX_TEXT_LENGTH, MAX_URL_LENGTH, Role, Status
from app.users import MIN_PASSWORD

try:
    from wtforms import SelectChoice
except ImportError:  # WTForms before 3.3 takes (value, label) tuples
    SelectChoice = None

MAX_UPLOAD = 20 * 1024 * 1024


def choices(pairs: Iterable[tuple[str, str]]) -> list[Any]:
    """Options of a select field, in the form this WTForms version wants."""
    return [SelectChoice(v, label) if SelectChoice is not None else (v, label) for v, label in pairs]


class Form(FlaskForm):  # type: ignore[misc]
    """A form that changes something: it carries the CSRF token."""


class QueryForm(FlaskForm):  # type: ignore[misc]
    """A filter sent with GET: it changes nothing, so it has no CSRF token."""

    class Meta:
        csrf = False


def _reason(label: str = "Reason", required: bool = False) -> TextAreaField:
    checks = [InputRequired(message="give a reason")] if required else [Optional()]
    return TextAreaField(label, validators=[*checks, Length(max=MAX_TEXT_LENGTH)],
                         render_kw={"rows": 2, "maxlength": MAX_TEXT_LENGTH})


# --------------------------------------------------------------------------- sign-in


class LoginForm(Form):
    username = StringField("User name", validators=[InputRequired(), Length(max=64)],
                           render_kw={"autocomplete": "username", "autofocus": True, "spellcheck": "false"})
    password = PasswordField("Password", validators=[InputRequired(), Length(max=1024)],
                             render_kw={"autocomplete": "current-password"})


class CodeForm(Form):
    code = StringField("Six-digit code from your authenticator app",
                       validators=[InputRequired(), Regexp(r"^\s*\d{6}\s*$", message="the code is six digits")],
                       render_kw={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True,
                                  "maxlength": 8})


class SignInCodeForm(Form):
    code = StringField("Six-digit code from your authenticator app, or a recovery code",
                       validators=[InputRequired(),
                                   Regexp(r"^\s*(\d{6}|[A-Za-z2-7]{4}-?[A-Za-z2-7]{4}-?[A-Za-z2-7]{4})\s*$",
                                          message="enter the six digits your app shows, or a recovery code "
                                                  "such as abcd-efgh-ijkl")],
                       render_kw={"autocomplete": "one-time-code", "autofocus": True, "maxlength": 20,
                                  "spellcheck": "false"})


class EmptyForm(Form):
    """A button that changes something and needs nothing but the CSRF token."""


class ReasonForm(Form):
    reason = _reason()


class RequiredReasonForm(Form):
    reason = _reason(required=True)


# --------------------------------------------------------------------------- entries


class EntryForm(Form):
    value = StringField("Domain or URL", validators=[InputRequired(), Length(max=MAX_URL_LENGTH)],
                        render_kw={"spellcheck": "false", "autocomplete": "off", "maxlength": MAX_URL_LENGTH})
    type = SelectField("Type", choices=choices([("", "work it out (URL if it has ://)"), ("domain", "domain"),
                                                ("url", "URL")]), validators=[Optional()])
    subdomains = BooleanField("Block every name under the domain too (*.name)", default=True)
    category = SelectField("Category", choices=[])
    reason = _reason("Why it must be blocked")
    evidence_ref = StringField("Evidence reference (case number, not the material)",
                               validators=[Optional(), Length(max=MAX_REF_LENGTH)])
    check = SubmitField("Check what it covers")
    submit = SubmitField("Submit for vetting")


class ImportForm(Form):
    """Shown on the same page as :class:`EntryForm`: its fields have ids of
    their own (``upload-...``), so a label of one form never works the other."""

    file = FileField("File (CSV with a header naming value, or one domain or URL a line)", id="upload-file",
                     validators=[FileRequired(message="choose a file"),
                                 FileSize(MAX_UPLOAD, message="the file is larger than 20 MB")])
    subdomains = SelectField("Subdomains for the file's domains", id="upload-subdomains",
                             choices=choices([("", "as the file says (default: yes)"),
                                              ("true", "yes, block names under each domain"),
                                              ("false", "no, exact names only")]))
    category = SelectField("Category for lines that give none", id="upload-category", choices=[])
    reason = TextAreaField("Reason for lines that give none", id="upload-reason",
                           validators=[Optional(), Length(max=MAX_TEXT_LENGTH)],
                           render_kw={"rows": 2, "maxlength": MAX_TEXT_LENGTH})
    dry_run = BooleanField("Only check: change nothing", id="upload-dry-run")


class EntryFilterForm(QueryForm):
    q = StringField("Name", validators=[Optional(), Length(max=MAX_URL_LENGTH)],
                    render_kw={"spellcheck": "false", "placeholder": "example.com"})
    mode = SelectField("Match", choices=choices([("exact", "exact name (and what covers it)"),
                                                 ("contains", "name contains (slow: reads every entry)")]),
                       default="exact")
    status = SelectField("State", choices=choices([("", "any"), *((s.value, s.value) for s in Status)]),
                         validators=[Optional()])
    category = SelectField("Category", choices=[], validators=[Optional()])
    agency = StringField("Agency", validators=[Optional(), Length(max=100)])


# --------------------------------------------------------------------------- allowlist, users, ISPs


class AllowForm(Form):
    domain = StringField("Domain", validators=[InputRequired(), Length(max=1000)],
                         render_kw={"spellcheck": "false"})
    subdomains = BooleanField("Also never block any name under it")
    reason = _reason("Why it must never be blocked")
    # Set by the confirmation step: the entries the admin saw would be
    # suspended (comma-separated ids; empty: none). Absent on the first post.
    confirmed = HiddenField()
    expect = HiddenField()


class UserAddForm(Form):
    name = StringField("User name", validators=[InputRequired(), Length(max=32)],
                       render_kw={"spellcheck": "false", "autocomplete": "off"})
    role = SelectField("Role", choices=choices((r.value, r.value) for r in Role), default=Role.CURATOR.value)
    agency = SelectField("Agency", choices=[], validators=[InputRequired(message="pick an agency")],
                         validate_choice=False)
    password = PasswordField(f"Initial password (at least {MIN_PASSWORD} characters; empty: make one)",
                             validators=[Optional(), Length(max=1024)], render_kw={"autocomplete": "new-password"})


class UserEditForm(Form):
    role = SelectField("Role", choices=choices((r.value, r.value) for r in Role))
    agency = SelectField("Agency", choices=[], validators=[InputRequired(message="pick an agency")],
                         validate_choice=False)
    reason = _reason()


class AgencyForm(Form):
    name = StringField("Agency name (as people will pick it)", validators=[InputRequired(), Length(min=2, max=100)],
                       render_kw={"spellcheck": "false"})
    reason = _reason()


class AgencyRenameForm(Form):
    name = StringField("New name", validators=[InputRequired(), Length(min=2, max=100)],
                       render_kw={"spellcheck": "false"})
    reason = _reason()


class IspAddForm(Form):
    name = StringField("Name (lower-case letters, digits, dashes)", validators=[InputRequired(), Length(max=40)],
                       render_kw={"spellcheck": "false", "autocomplete": "off"})
    notify = TextAreaField("NOTIFY targets (IP:PORT, one a line)", validators=[Optional(), Length(max=4000)],
                           render_kw={"rows": 2, "spellcheck": "false"})
    allow_from = TextAreaField("Allowed addresses for zone transfers (CIDR, one a line; empty: any)",
                               validators=[Optional(), Length(max=4000)], render_kw={"rows": 2, "spellcheck": "false"})
    address_only = BooleanField("Address only, no TSIG key (weaker: for resolvers that cannot sign, "
                                "such as Unbound; needs allowed addresses)")
    reason = _reason()


class IspEditForm(Form):
    notify = TextAreaField("NOTIFY targets (IP:PORT, one a line)", validators=[Optional(), Length(max=4000)],
                           render_kw={"rows": 3, "spellcheck": "false"})
    allow_from = TextAreaField("Allowed addresses (CIDR, one a line; empty: any)",
                               validators=[Optional(), Length(max=4000)], render_kw={"rows": 3, "spellcheck": "false"})
    reason = _reason()


class IspRotateForm(Form):
    token = BooleanField("New feed token", default=True)
    tsig = BooleanField("New TSIG secret")
    reason = _reason()


# --------------------------------------------------------------------------- account


class PasswordForm(Form):
    current = PasswordField("Current password", validators=[InputRequired(), Length(max=1024)],
                            render_kw={"autocomplete": "current-password"})
    new = PasswordField(f"New password (at least {MIN_PASSWORD} characters)",
                        validators=[InputRequired(), Length(max=1024)], render_kw={"autocomplete": "new-password"})
    confirm = PasswordField("New password again",
                            validators=[InputRequired(), EqualTo("new", message="the two new passwords differ")],
                            render_kw={"autocomplete": "new-password"})
    code = StringField("Code from your authenticator app, or a recovery code",
                       validators=[Optional(), Length(max=20)],
                       render_kw={"autocomplete": "one-time-code", "spellcheck": "false", "maxlength": 20})


class RecoveryCodesForm(Form):
    current = PasswordField("Your password", validators=[InputRequired(), Length(max=1024)],
                            render_kw={"autocomplete": "current-password"})


# --------------------------------------------------------------------------- publications, audit


class AuditFilterForm(QueryForm):
    actor = StringField("Who", validators=[Optional(), Length(max=64)], render_kw={"spellcheck": "false"})
    action = StringField("Action (or its start, e.g. entry.)", validators=[Optional(), Length(max=64)],
                         render_kw={"spellcheck": "false"})
    target = StringField("Target (e.g. entry:12, user:alice)", validators=[Optional(), Length(max=200)],
                         render_kw={"spellcheck": "false"})
    since = DateField("From (day, UTC)", validators=[Optional()])
    until = DateField("To (day, UTC, included)", validators=[Optional()])


# --------------------------------------------------------------------------- public appeal


class AppealForm(FlaskForm):  # type: ignore[misc]
    """The stop page's appeal form. No session, so no session-bound CSRF token:
    ``form_token`` is a signed, time-stamped value made when the page was shown
    (see app.web.public), which the server checks instead."""

    class Meta:
        csrf = False

    domain = StringField("The address that was blocked", validators=[InputRequired(), Length(max=MAX_URL_LENGTH)],
                         render_kw={"spellcheck": "false", "autocomplete": "off"})
    contact = StringField("How we can reach you (e-mail address or telephone number)",
                          validators=[InputRequired(), Length(max=200)], render_kw={"autocomplete": "email"})
    statement = TextAreaField("Why the block is wrong", validators=[InputRequired(), Length(max=5000)],
                              render_kw={"rows": 6, "maxlength": 5000})
    # Left empty by people (it is hidden from them); filled in by form-filling robots.
    website = StringField("Leave this field empty", validators=[Optional()],
                          render_kw={"autocomplete": "off", "tabindex": "-1"})
    form_token = HiddenField()
