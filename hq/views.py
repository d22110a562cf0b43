"""Signing in and out of the web UI (Django's auth views with HQ's templates, failed
attempts limited by ``hq.login_limit``), and the API docs page (Swagger UI)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.views import SpectacularSwaggerSplitView

from . import login_limit
from .errors import error_body
from .middleware import wants_json
from .web import viewer_required

TOO_MANY = ("Too many failed sign-ins for this user from your address. Try again in "
            "{minutes} minutes.")


def _client(request: HttpRequest) -> tuple[str, str]:
    return request.META.get("REMOTE_ADDR", ""), request.POST.get("username", "")[:150]


class LoginView(auth_views.LoginView):
    template_name = "login.html"
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if login_limit.blocked(*_client(request)):
            return self._too_many(request)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        login_limit.failed(*_client(self.request))
        return super().form_invalid(form)

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        login_limit.succeeded(*_client(self.request))
        return super().form_valid(form)

    def _too_many(self, request: HttpRequest) -> HttpResponse:
        seconds = login_limit.retry_after_s()
        message = TOO_MANY.format(minutes=max(1, round(seconds / 60)))
        response: HttpResponse
        if wants_json(request):
            response = JsonResponse(error_body("rate_limited", message), status=429)
        else:
            # unbound: validating it would try the password once more
            form = AuthenticationForm(request, initial={"username": _client(request)[1]})
            response = self.render_to_response(
                self.get_context_data(form=form, too_many=message), status=429)
        response["Retry-After"] = str(seconds)
        return response


login_view = LoginView.as_view()
logout_view = auth_views.LogoutView.as_view()  # POST only; goes to LOGOUT_REDIRECT_URL


class ApiDocs(SpectacularSwaggerSplitView):
    """Swagger UI from drf-spectacular-sidecar, its start script a separate request (no
    inline script under the CSP), in a template without inline style."""

    template_name = "hq/swagger_ui.html"


_docs = ApiDocs.as_view(url_name="schema")


@viewer_required
def api_docs(request: HttpRequest) -> HttpResponse:
    response = _docs(request)
    assert isinstance(response, HttpResponse)  # a rendered TemplateResponse
    return response
