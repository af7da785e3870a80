from django.urls import path

from organizations import apis

urlpatterns = [
    path("auth/register", apis.RegisterApi.as_view(), name="auth-register"),
    path("auth/token", apis.TokenApi.as_view(), name="auth-token"),
    path("auth/tokens", apis.TokenListApi.as_view(), name="auth-tokens"),
    path("auth/tokens/<int:token_id>", apis.TokenDetailApi.as_view(), name="auth-token-detail"),
    path("me", apis.MeApi.as_view(), name="me"),
    path("me/password", apis.PasswordApi.as_view(), name="me-password"),
    path("orgs/", apis.OrganizationListCreateApi.as_view(), name="org-list"),
    path("orgs/<int:org_id>/", apis.OrganizationDetailApi.as_view(), name="org-detail"),
    path("orgs/<int:org_id>/members/", apis.MembershipListCreateApi.as_view(), name="org-members"),
    path("orgs/<int:org_id>/members/postal-codes", apis.MemberPostalCodesApi.as_view(),
         name="org-member-postal-codes"),
    path("orgs/<int:org_id>/members/<int:membership_id>", apis.MembershipDetailApi.as_view(),
         name="org-member-detail"),
    path("orgs/<int:org_id>/invitations/", apis.InvitationListApi.as_view(), name="org-invitations"),
    path("orgs/<int:org_id>/invitations/<int:invitation_id>", apis.InvitationDetailApi.as_view(),
         name="org-invitation-detail"),
    path("invitations/<str:token>/accept", apis.InvitationAcceptApi.as_view(), name="invitation-accept"),
    path("orgs/<int:org_id>/slack", apis.SlackSettingsApi.as_view(), name="org-slack"),
    path("orgs/<int:org_id>/api-keys/", apis.ApiKeyListCreateApi.as_view(), name="org-api-keys"),
    path("orgs/<int:org_id>/api-keys/<int:key_id>/revoke", apis.ApiKeyRevokeApi.as_view(), name="org-api-key-revoke"),
]
