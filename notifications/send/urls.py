from django.urls import path

from notifications.send import apis

urlpatterns = [
    path("send", apis.SendCreateApi.as_view(), name="send"),
    path("send/batch", apis.SendBatchCreateApi.as_view(), name="send-batch"),
    path("send/<int:send_id>", apis.SendDetailApi.as_view(), name="send-detail"),
    path("send/<int:send_id>/deliveries", apis.SendDeliveryListApi.as_view(), name="send-deliveries"),
]
