"""Browser pages of accounts: the sign-in form, throttled and audited like POST /api/v1/auth/token."""
import math

from django.contrib.auth import views as auth_views

from config.errors import RateLimited
from organizations import services


def _ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


class LoginView(auth_views.LoginView):
    template_name = "registration/login.html"

    def post(self, request, *args, **kwargs):
        try:
            services.user_login_check(username=request.POST.get("username", ""), ip=_ip(request))
        except RateLimited as exc:
            return self._throttled(exc)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        username = self.request.POST.get("username", "")
        if username and self.request.POST.get("password"):
            try:
                services.user_login_failed(username=username, ip=_ip(self.request), via="web")
            except RateLimited as exc:
                return self._throttled(exc)
        return super().form_invalid(form)

    def form_valid(self, form):
        services.user_login_succeeded(user=form.get_user(), ip=_ip(self.request), via="web")
        return super().form_valid(form)

    def _throttled(self, exc: RateLimited):
        context = self.get_context_data(form=self.get_form_class()(self.request), throttled=exc.message)
        response = self.render_to_response(context, status=429)
        response["Retry-After"] = str(math.ceil(exc.retry_after))
        return response
