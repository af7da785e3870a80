"""Error codes of identity and tenancy (the `code` of {"message", "code", "extra"})."""
from enum import StrEnum


class OrganizationsError(StrEnum):
    VALIDATION_ERROR = "validation_error"
    # accounts
    INVALID_CREDENTIALS = "invalid_credentials"
    REGISTRATION_UNAVAILABLE = "registration_unavailable"
    EMAIL_TAKEN = "email_taken"
    RATE_LIMITED = "rate_limited"
    ACCOUNT_LOCKED = "account_locked"
    USER_REQUIRED = "user_required"
    # user tokens
    INVALID_TOKEN = "invalid_token"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REVOKED = "token_revoked"
    TOKEN_NOT_FOUND = "token_not_found"
    # organizations and members
    ORGANIZATION_NOT_FOUND = "organization_not_found"
    SLUG_TAKEN = "slug_taken"
    ADMIN_REQUIRED = "admin_required"
    INVALID_ROLE = "invalid_role"
    MEMBERSHIP_EXISTS = "membership_exists"
    # bulk postal-code update (POST /orgs/{id}/members/postal-codes)
    BULK_TOO_MANY_ROWS = "bulk_too_many_rows"      # more than 100,000 updates
    BULK_ROWS_INVALID = "bulk_rows_invalid"        # extra.rows lists each bad row by index, with a row code:
    ROW_MALFORMED = "row_malformed"                # not {"email": string, "postal_code": string}
    EMAIL_INVALID = "email_invalid"
    EMAIL_DUPLICATED = "email_duplicated"          # the same email (any case) twice in one request
    POSTAL_CODE_INVALID = "postal_code_invalid"
    MEMBERSHIP_NOT_FOUND = "membership_not_found"
    OWNER_PROTECTED = "owner_protected"
    # invitations
    INVITATION_NOT_FOUND = "invitation_not_found"
    INVITATION_EXPIRED = "invitation_expired"
    INVITATION_USED = "invitation_used"
    # API keys
    API_KEY_NOT_FOUND = "api_key_not_found"
    INVALID_API_KEY = "invalid_api_key"
    REVOKED_API_KEY = "revoked_api_key"
    SCOPE_REQUIRED = "scope_required"
    INVALID_SCOPE = "invalid_scope"
