"""Signing in and out of the web UI (Django's auth views with HQ's templates)."""

from django.contrib.auth import views as auth_views

login_view = auth_views.LoginView.as_view(
    template_name="login.html", redirect_authenticated_user=True
)
logout_view = auth_views.LogoutView.as_view()  # POST only; goes to LOGOUT_REDIRECT_URL
