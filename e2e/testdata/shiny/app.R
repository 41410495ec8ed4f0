# A small Shiny app for the real-browser system test (e2e/browser_test.go),
# served by Shiny's own server: shiny::runApp(dir), that is httpuv.
#
# A clock pushed every second keeps each user's WebSocket busy. The server
# function runs once a user's WebSocket session is up, so it logs
# "session up <peer address>" to stderr, which the test waits for.
library(shiny)

ui <- fluidPage(
  titlePanel("tcp_established_exporter e2e"),
  textOutput("clock")
)

server <- function(input, output, session) {
  peer <- session$request$REMOTE_ADDR
  message("session up ", peer)
  session$onSessionEnded(function() message("session down ", peer))
  output$clock <- renderText({
    invalidateLater(1000)
    format(Sys.time(), "%H:%M:%S")
  })
}

shinyApp(ui, server)
